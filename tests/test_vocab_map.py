"""VocabMap: shared tokens, special tokens by role and content, new tokens and decompositions."""

from __future__ import annotations

from tokenizers import AddedToken

from helpers import train_tiny_tokenizer
from tokensurgery import TokenKind, Vocabulary, VocabMap


def test_identity_map_is_all_shared(smollm2_vocab):
    vm = VocabMap.build(smollm2_vocab, smollm2_vocab)
    assert not vm.new and len(vm.shared) + len(vm.specials) == len(smollm2_vocab)
    assert all(t == s for t, s in {**vm.shared, **vm.specials}.items())


def test_real_pair_overlap(smollm2_vocab, gemma_vocab):
    """SmolLM2-135M and Gemma-3-270M share about 46k tokens by surface bytes."""
    light = VocabMap.build(gemma_vocab, smollm2_vocab)  # Gemma base, SmolLM2 donor: few new
    heavy = VocabMap.build(smollm2_vocab, gemma_vocab)  # SmolLM2 base, Gemma donor: ~210k new
    assert 45_000 < len(light.shared) < 47_500 and 45_000 < len(heavy.shared) < 47_500
    assert 2_500 < len(light.new) < 4_000
    assert 200_000 < len(heavy.new) < 220_000
    assert len(heavy.unused) > 6000  # Gemma's <unusedN> placeholders are neither shared nor new
    # eos is mapped by role although the contents differ
    eos = smollm2_vocab.roles["eos"]
    assert light.specials[eos] == gemma_vocab.roles["eos"] and light.special_how[eos] == "role:eos"
    # shared tokens really have identical bytes
    for t, s in list(heavy.shared.items())[::997]:
        assert gemma_vocab.surface[t] == smollm2_vocab.surface[s]


def test_decompositions_spell_the_token(smollm2_vocab, gemma_vocab):
    heavy = VocabMap.build(smollm2_vocab, gemma_vocab)
    ds = heavy.decompositions(heavy.new_text[::50])
    missing = set(smollm2_vocab.missing_bytes)
    for t, pieces in ds.items():
        want = bytes(b for b in gemma_vocab.surface[t] if b not in missing)
        assert smollm2_vocab.decode_bytes(pieces) == want
    light = VocabMap.build(gemma_vocab, smollm2_vocab)
    for t, pieces in light.decompositions().items():  # Gemma has byte fallback: always exact
        assert gemma_vocab.decode_bytes(pieces) == smollm2_vocab.surface[t]


def test_decomposition_matches_source_tokenizer_on_words(smollm2_vocab, gemma_vocab):
    """For a word-start token, the decomposition is what the base tokenizer itself produces
    when that word follows a space in running text."""
    heavy = VocabMap.build(smollm2_vocab, gemma_vocab)
    checked = 0
    for t in heavy.new_text[::200]:
        data = gemma_vocab.surface[t]
        try:
            word = data.decode()
        except UnicodeDecodeError:
            continue
        if not word.startswith(" ") or not word[1:].isalpha():
            continue
        in_text = smollm2_vocab.encode("x" + word)[1:]
        if smollm2_vocab.decode_bytes(in_text) == data:
            assert heavy.decompose(t) == in_text, word
            checked += 1
    assert checked > 100


def test_specials_mapped_by_content(tiny_tokenizers):
    """Every additional special is matched by content, not only bos/eos/pad/unk."""
    a = train_tiny_tokenizer("byte_level_bpe")
    b = train_tiny_tokenizer("sentencepiece_bpe")
    a.add_special_tokens([AddedToken("<tool_call>", special=True), AddedToken("<only_in_a>", special=True)])
    b.add_special_tokens([AddedToken("<tool_call>", special=True), AddedToken("<only_in_b>", special=True)])
    va = Vocabulary.from_hf_tokenizer(a, name="a")
    vb = Vocabulary.from_hf_tokenizer(b, name="b")
    vm = VocabMap.build(va, vb)
    tb, ta = vb.tokens.index("<tool_call>"), va.tokens.index("<tool_call>")
    assert vm.specials[tb] == ta and vm.special_how[tb] == "content"
    assert vm.specials[vb.tokens.index("<|im_start|>")] == va.tokens.index("<|im_start|>")
    assert vb.tokens.index("<only_in_b>") in vm.new_special
    assert vm.specials[vb.roles["bos"]] == va.roles["bos"]
    # byte-fallback tokens of b map onto a's single-byte tokens
    byte_a = vb.tokens.index("<0x41>")
    assert vb.kinds[byte_a] == TokenKind.BYTE_FALLBACK and va.surface[vm.shared[byte_a]] == b"A"
