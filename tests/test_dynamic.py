"""Dynamic batch-level merging: the incremental merger against a recount-every-step
reference, segments and merged batches against the tokenizer's own encoding, the model over
BASE + new tokens against the plain model (bit-identical with no merges) and against the
same model with its embedding matrix grown by the new rows, the scorer, the CLI."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensurgery import open_vocabulary
from tokensurgery.cli import cli
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.evaluate import load_causal_lm
from tokensurgery.hypernets.dynamic import BatchMerger, DynamicModel, chunk_text, score_batch, start_token
from tokensurgery.hypernets.dynamic import merger as merger_module
from tokensurgery.kernels.merges import merge_words, merge_words_naive

from helpers import corpus_lines, save_hf_tokenizer

TEXTS = ["The cat sat on the mat. The cat ate the rat.", "  indented   = 12345 ;\n\nthe mat, the mat!",
         "Über den Wolken muss die Freiheit wohl grenzenlos sein.", "漢字 and emoji 👋👋 the cat"]


# ---- the merge kernel -------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(seqs=st.lists(st.lists(st.integers(0, 4), max_size=9), min_size=1, max_size=14),
       ws=st.sets(st.integers(0, 4), max_size=2), max_merges=st.one_of(st.none(), st.integers(0, 12)),
       min_tokens=st.integers(0, 20))
def test_incremental_merger_equals_recounting_every_step(seqs, ws, max_merges, min_tokens):
    group = {s: int(s in ws) for s in range(5)}
    ref = merge_words_naive(seqs, 100, group, max_merges, min_tokens)
    uniq = Counter(map(tuple, seqs))
    words = list(uniq)
    fast = merge_words(words, [uniq[w] for w in words], 100, group, max_merges, min_tokens)
    merged = dict(zip(words, fast.words))
    assert [merged[tuple(s)] for s in seqs] == ref.words
    assert fast.merges == ref.merges and fast.tokens == ref.tokens == sum(map(len, ref.words))


def test_merges_count_every_occurrence_and_respect_groups():
    # (1, 1) occurs twice inside "1 1 1" (overlapping) and twice elsewhere: 4 > 3 for (2, 3)
    result = merge_words([(1, 1, 1), (1, 1), (2, 3), (0, 9)], [1, 1, 3, 5], 10, {0: 0, 1: 0, 2: 0, 3: 0, 9: 1},
                         max_merges=2)
    assert result.merges == [(1, 1, 10), (2, 3, 11)]
    assert result.words == [[10, 1], [10], [11], [0, 9]]  # 0 and 9 are in different groups: never merged


# ---- segments and batches ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_vocab(tiny_model_dirs):
    return open_vocabulary(tiny_model_dirs["tied"])


def _check_batch(merger: BatchMerger, texts: list[str], batch) -> None:
    vocab = merger.vocab
    surface = lambda i: batch.new_tokens[i - batch.n_base].surface if i >= batch.n_base else vocab.surface[i]
    for text, base, ids, segs in zip(texts, batch.base_ids, batch.ids, batch.segments):
        assert base == vocab.encode(text)  # the tokenizer's own encoding, cut into segments
        assert b"".join(surface(i) for i in ids) == vocab.decode_bytes(base)  # same bytes after merging
        ends, pos = set(), 0
        for s in segs:
            pos += len(vocab.decode_bytes(s))
            ends.add(pos)
        pos = 0
        for i in ids:  # no token crosses a segment end
            inside = [e for e in ends if pos < e < pos + len(surface(i))]
            assert not inside, (text, surface(i))
            pos += len(surface(i))
    for t in batch.new_tokens:
        assert vocab.decode_bytes(t.parts) == t.surface and t.surface not in vocab.by_bytes
        assert len({merger_module._is_whitespace(vocab.surface[p]) for p in t.parts}) == 1


def test_segments_are_pretokens_and_merging_keeps_the_bytes(byte_vocab):
    merger = BatchMerger(byte_vocab)
    assert merger.boundary == "pretokens"
    assert [byte_vocab.decode_bytes(s) for s in merger.segments("The cat, 12")] == [b"The", b" cat", b",", b" 12"]
    for merges in (0, 3, 30, None):
        batch = merger(TEXTS, merges=merges, reduction=None if merges is not None else 0.99)
        _check_batch(merger, TEXTS, batch)
        assert batch.merges <= (merges if merges is not None else 10**9)
    assert merger(TEXTS, merges=0).ids == merger(TEXTS, merges=0).base_ids
    full = merger(TEXTS, merges=10_000)
    assert full.tokens_after == full.limit and full.reduction_to_limit == 1.0  # every same-kind run is one token
    assert any(t.surface == b" cat" for t in full.new_tokens) or b" cat" in byte_vocab.by_bytes


def test_reduction_target_and_known_tokens(byte_vocab):
    merger = BatchMerger(byte_vocab)
    batch = merger(TEXTS * 4, reduction=0.1)
    assert batch.reduction >= 0.1 and merger(TEXTS * 4, reduction=0.1, merges=1).merges == 1
    fewer = merger(TEXTS * 4, merges=batch.merges - 1)
    assert fewer.reduction < 0.1  # it stopped at the first merge that reached the target
    # a merge whose bytes BASE has as one token becomes that token, not a new one
    word = next(s for s in byte_vocab.by_bytes if len(byte_vocab.decompose(s)) == 1 and s.startswith(b" ") and len(s) > 4)
    ids = [byte_vocab.by_bytes[word[:2]], *byte_vocab.decompose(word[2:])]
    assert byte_vocab.decode_bytes(ids) == word and len(ids) > 1
    merged = merger.merge_segments([[ids]] * 3, merges=len(ids) - 1)
    assert merged.ids[0] == [byte_vocab.by_bytes[word]] and merged.known >= 1 and not merged.new_tokens


def test_tail_segments_stay_in_base_tokens_and_count_towards_the_target(byte_vocab):
    """`tail=N`: each text's last N segments keep BASE's ids; the rest merges exactly as it
    would alone, with as many merges as the target over *all* tokens needs (one fewer misses it)."""
    merger = BatchMerger(byte_vocab)
    segs = [merger.segments(t) for t in TEXTS * 3]
    flat = [[t for seg in s for t in seg] for s in segs]
    for tail in (0, 1, 4):
        got = merger.merge_segments(segs, reduction=0.2, tail=tail)
        assert got.merges > 0 and got.reduction >= 0.2 - 1e-12
        assert merger.merge_segments(segs, merges=got.merges - 1, tail=tail).reduction < 0.2
        heads = merger.merge_segments([s[: len(s) - tail] for s in segs], merges=got.merges)
        for r, s in enumerate(segs):
            rest = [t for seg in s[len(s) - tail :] for t in seg] if tail else []
            assert got.ids[r] == heads.ids[r] + rest
        assert [t.surface for t in got.new_tokens] == [t.surface for t in heads.new_tokens]
        _check_batch(merger, TEXTS * 3, got)  # same bytes, no token across a segment end
    first = merger.merge_segments(segs, reduction=0.2).merges
    assert merger.merge_segments(segs, reduction=0.2, tail=4).merges > first  # the rest merges more
    everything = merger.merge_segments(segs, reduction=0.2, tail=1000)
    assert everything.ids == flat and everything.merges == 0 and everything.limit == sum(map(len, flat))
    with pytest.raises(TokenSurgeryError, match="tail must be >= 0"):
        merger.merge_segments(segs, merges=3, tail=-1)


@pytest.mark.parametrize("boundary", ["pretokens", "word"])
def test_whole_chars_never_merges_pieces_of_characters(byte_vocab, boundary):
    """`whole_chars`: no new token holds a token that is part of a UTF-8 character (checked by
    decoding every surface); without it such pieces do merge in the same batch."""
    def whole(data: bytes) -> bool:
        return data.decode("utf-8", "ignore").encode() == data

    texts = TEXTS * 4 + ["漢字漢字 東京 東京 👋👋 👋 naïve café café"]
    pieces = {i for i, b in enumerate(byte_vocab.surface) if not whole(b)}
    free = BatchMerger(byte_vocab, boundary=boundary)(texts, merges=10_000)
    assert any(set(t.parts) & pieces for t in free.new_tokens)
    merger = BatchMerger(byte_vocab, boundary=boundary, whole_chars=True)
    got = merger(texts, merges=10_000)
    _check_batch(merger, texts, got)
    assert got.new_tokens and all(whole(t.surface) and not set(t.parts) & pieces for t in got.new_tokens)
    assert any("é".encode() in t.surface for t in got.new_tokens)  # whole 2-byte characters still merge
    assert sum(i in pieces for ids in got.ids for i in ids) == sum(i in pieces for ids in got.base_ids for i in ids)


@pytest.mark.parametrize("boundary", ["word", "sentence"])
def test_word_and_sentence_boundaries(tiny_tokenizers, tmp_path, boundary):
    save_hf_tokenizer(tiny_tokenizers["sentencepiece_bpe"], tmp_path, {"bos": "<s>", "eos": "</s>", "unk": "<unk>"})
    vocab = open_vocabulary(tmp_path / "tokenizer.json")
    assert BatchMerger(vocab).boundary == "word"  # this pre-tokenizer does not split words
    merger = BatchMerger(vocab, boundary=boundary)
    texts = ["The cat sat. The dog ran!\nA new line here.", "Another one. And more text here"]
    segs = [vocab.decode_bytes(s) for s in merger.segments(texts[0])]
    assert b"".join(segs) == texts[0].encode()
    if boundary == "word":  # whitespace only at a segment's ends (this tokenizer's tokens end in "▁")
        assert len(segs) >= 11 and not any(any(c in b" \n" for c in seg.strip()) for seg in segs)
    else:
        assert [seg for seg in segs if not seg.isspace()] == [b"The cat sat. ", b"The dog ran!", b"A new line here."]
    batch = merger(texts, merges=10_000)
    _check_batch(merger, texts, batch)
    assert batch.tokens_after == batch.limit


def test_bad_input_is_one_line(tiny_tokenizers, tmp_path, byte_vocab):
    merger = BatchMerger(byte_vocab)
    for call, what in [(lambda: merger([]), "empty"), (lambda: merger(TEXTS, merges=-1), "merges"),
                       (lambda: merger(TEXTS, reduction=1.5), "reduction"),
                       (lambda: BatchMerger(byte_vocab, boundary="line"), "boundary")]:
        with pytest.raises(TokenSurgeryError, match=what):
            call()
    save_hf_tokenizer(tiny_tokenizers["wordpiece"], tmp_path, {"unk": "[UNK]", "pad": "[PAD]"})
    wordpiece = open_vocabulary(tmp_path / "tokenizer.json")
    with pytest.raises(TokenSurgeryError, match="cannot spell"):
        BatchMerger(wordpiece)(["ordinary words ☃ snowman"])


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), n=st.integers(8, 64))
def test_chunks_rejoin_to_the_text(text, n):
    pieces = chunk_text(text, n)
    assert "".join(pieces) == text and all(0 < len(p.encode()) <= n for p in pieces)


# ---- the model over BASE + new tokens ------------------------------------------------------------

def _tiny_gemma3(folder, tok):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    save_hf_tokenizer(tok, folder, {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"})
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0,
                              sliding_window=16, max_position_embeddings=512)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def models(tiny_model_dirs, tiny_tokenizers, tmp_path_factory):
    gemma = tmp_path_factory.mktemp("gemma3")
    _tiny_gemma3(gemma, tiny_tokenizers["sentencepiece_bpe"])
    return {name: load_causal_lm(folder) for name, folder in
            (("tied", tiny_model_dirs["tied"]), ("untied", tiny_model_dirs["untied"]), ("gemma3", gemma))}


@pytest.mark.parametrize("name", ["tied", "untied", "gemma3"])
def test_no_merges_gives_the_plain_models_logits_bit_for_bit(models, name):
    model, vocab = models[name]
    dm = DynamicModel(model)
    batch = BatchMerger(vocab, n_base=dm.n_base)(TEXTS, merges=0)
    rows = [[start_token(vocab)] + ids for ids in batch.ids]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    new_in, new_out = dm.rows(batch.new_tokens)
    with torch.no_grad():
        ours = dm.logits(dm.hidden(ids, mask, new_in), new_out)
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ours[mask.bool()], plain[mask.bool()])


@pytest.mark.parametrize("name", ["tied", "untied", "gemma3"])
def test_merged_batch_scores_as_the_model_with_grown_embeddings(models, name):
    """Mode B bits = the same model with the new tokens' FVT rows appended to its embedding
    matrices, run and scored by transformers; new rows = mean of the joined ids' rows."""
    import copy

    model, vocab = models[name]
    dm = DynamicModel(model)
    merger = BatchMerger(vocab, n_base=dm.n_base)
    batch = merger(TEXTS, merges=25)
    assert batch.new_tokens
    new_in, new_out = dm.rows(batch.new_tokens)
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for t, a, b in zip(batch.new_tokens, new_in, new_out):
        assert torch.allclose(a, w_in[list(t.parts)].mean(0), atol=1e-6)
        assert torch.allclose(b, w_out[list(t.parts)].mean(0), atol=1e-6)
    grown = copy.deepcopy(model)
    n = dm.n_base + len(batch.new_tokens)
    grown.resize_token_embeddings(n, mean_resizing=False)
    with torch.no_grad():
        grown.get_input_embeddings().weight[dm.n_base:] = new_in
        grown.get_output_embeddings().weight[dm.n_base:] = new_out  # tied: the same rows
    start, ref = start_token(vocab), 0.0
    for ids in batch.ids:
        x = torch.tensor([[start] + ids])
        with torch.no_grad():
            logits = grown(input_ids=x).logits[0, :-1]
        ref += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item() / torch.log(torch.tensor(2.0)).item()
    score = score_batch(DynamicModel(model), merger, TEXTS, merges=25)
    assert score.bits_b == pytest.approx(ref, rel=1e-4)
    assert score.tokens_after < score.tokens_before and score.new_tokens == len(batch.new_tokens)
    assert score.limit == batch.limit and score.tokens_after == batch.tokens_after


def test_score_with_no_merges_is_the_base_and_cache_counts(models):
    model, vocab = models["tied"]
    dm = DynamicModel(model, cache_size=4)
    merger = BatchMerger(vocab, n_base=dm.n_base)
    plain = score_batch(dm, merger, TEXTS, merges=0)
    assert plain.bits_a == plain.base_bits_a and plain.bits_b == plain.base_bits_b and plain.bits_b > 0
    start = start_token(vocab)
    ref = 0.0
    for text in TEXTS:  # the plain model on [start] + its own tokens, every token scored
        x = torch.tensor([[start] + vocab.encode(text)])
        with torch.no_grad():
            ref += torch.nn.functional.cross_entropy(model(input_ids=x).logits[0, :-1], x[0, 1:], reduction="sum").item()
    assert plain.base_bits_b == pytest.approx(ref / torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert plain.bytes == sum(len(t.encode()) for t in TEXTS) and 0 < plain.bytes_a < plain.bytes
    merged = merger(TEXTS, merges=12)
    dm.rows(merged.new_tokens)
    assert dm.cache.misses == len(merged.new_tokens) and dm.cache.size == min(4, len(merged.new_tokens))
    dm.rows(merged.new_tokens[-2:])
    assert dm.cache.hits == 2  # the most recent rows stayed
    # contexts whose every segment is tail are not merged: mode A is the plain model's
    merged = score_batch(dm, merger, TEXTS, reduction=0.3)
    kept = score_batch(dm, merger, TEXTS, reduction=0.3, tail=1000)
    assert kept.bits_a == kept.base_bits_a and kept.context_tokens_after == kept.context_tokens_before
    assert merged.context_tokens_after < merged.context_tokens_before and merged.bits_a != merged.base_bits_a
    assert kept.bits_b == merged.bits_b and kept.tokens_after == merged.tokens_after  # mode B has no tail


def test_cli_dynamic_score(tiny_model_dirs, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(corpus_lines(3000, langs=("en",))), encoding="utf-8")
    out = tmp_path / "r.json"
    runner = CliRunner()
    r = runner.invoke(cli, ["dynamic", "score", str(tiny_model_dirs["tied"]), "--text", str(text), "--reduction", "0.1",
                            "--batch-size", "4", "--chunk-bytes", "256", "--json", str(out)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())["results"]["t.txt"]
    assert got["reduction"] >= 0.1 and got["tokens_per_byte_after"] < got["tokens_per_byte_before"]
    assert "bpb A" in r.output
    r = runner.invoke(cli, ["dynamic", "score", str(tiny_model_dirs["tied"]), "--text", str(text), "--merges", "-1"])
    assert r.exit_code != 0 and "merges must be >= 0" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["dynamic", "score", str(tiny_model_dirs["tied"]), "--text", str(text), "--reduction", "0.1",
                            "--tail", "1000", "--batch-size", "4", "--chunk-bytes", "256", "--json", str(out)])
    kept = json.loads(out.read_text())
    assert r.exit_code == 0 and kept["tail"] == 1000, r.output
    assert kept["results"]["t.txt"]["context_reduction"] == 0 < got["context_reduction"]
    assert kept["results"]["t.txt"]["bpb_a"] == kept["results"]["t.txt"]["base_bpb_a"]
    r = runner.invoke(cli, ["dynamic", "score", str(tiny_model_dirs["tied"]), "--text", str(text), "--reduction", "0.1",
                            "--whole-chars", "--batch-size", "4", "--chunk-bytes", "256", "--json", str(out)])
    assert r.exit_code == 0 and json.loads(out.read_text())["whole_chars"] is True, r.output
    r = runner.invoke(cli, ["dynamic", "score", str(tiny_model_dirs["tied"]), "--text", str(text), "--tail", "-1"])
    assert r.exit_code != 0 and "--tail" in r.output and "-1" in r.output and "Traceback" not in r.output


def test_cli_choices_match_the_library():
    from tokensurgery.hypernets.dynamic import cli as dynamic_cli
    from tokensurgery.hypernets.dynamic import generate as generate_module

    assert dynamic_cli.BOUNDARIES == merger_module.BOUNDARIES and dynamic_cli.ANN == generate_module.ANN


def test_cli_grow_and_generate(tiny_model_dirs, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines(20_000, langs=("en",))), encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "grown"
    r = runner.invoke(cli, ["dynamic", "grow", str(tiny_model_dirs["tied"]), str(out), "--corpus", str(corpus),
                            "--size", "900"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["dynamic", "grow", str(tiny_model_dirs["tied"]), str(out), "--corpus", str(corpus)])
    assert r.exit_code != 0 and "already exists" in r.output  # no --force
    r = runner.invoke(cli, ["dynamic", "generate", str(tiny_model_dirs["tied"]), "The cat", "--grown", str(out),
                            "--max-new-bytes", "30", "--ann", "exact", "--json", "-"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["bytes"] == 30 and got["steps"] >= 1 and got["prompt_tokens_read"] == got["prompt_tokens"]
    prompt = "the cat and the mat and the cat and the hat"
    r = runner.invoke(cli, ["dynamic", "generate", str(tiny_model_dirs["tied"]), prompt, "--ann", "exact",
                            "--max-new-bytes", "20", "--reduction", "0.3", "--boundary", "word", "--json", "-"])
    got = json.loads(r.output)
    assert r.exit_code == 0 and got["prompt_tokens_read"] <= 0.7 * got["prompt_tokens"], r.output
    r = runner.invoke(cli, ["dynamic", "generate", str(tiny_model_dirs["tied"]), prompt, "--tail", "2"])
    assert r.exit_code != 0 and "give --merges or --reduction" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["dynamic", "generate", str(tiny_model_dirs["tied"]), prompt, "--reduction", "1.5"])
    assert r.exit_code != 0 and "reduction must be a fraction" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["dynamic", "generate", str(tiny_model_dirs["untied"]), "The cat", "--grown", str(out)])
    assert r.exit_code != 0 and "grown for another model" in r.output and "Traceback" not in r.output


# ---- a hypernetwork trained on merged batches ----------------------------------------------------

def test_merge_step_is_mode_b_of_the_merged_batch(tiny_model_dirs, tmp_path):
    """At the start (an untrained residual hypernetwork is FVT) the training loss of a merged
    batch equals the mean cross-entropy of transformers' model with FVT rows appended."""
    import copy

    from tokensurgery.hypernets import Trainer
    from tokensurgery.hypernets.train import _rng

    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "hn", tiny_config(tokenizers="merges", seq_len=40),
                      TINY_NET, progress=False)
    got = trainer.merge_step(5, 0)
    c = trainer.config
    rng = _rng(c, 5, 0, 0)
    batch = trainer.mergers[0](trainer.batch_texts(5, 0), reduction=rng.uniform(0.02, c.max_reduction))
    assert batch.new_tokens and got["active"] > 0
    seqs = [s[: c.seq_len] for s in batch.ids]
    width = min(map(len, seqs))
    model = copy.deepcopy(trainer.lm.model)
    dm = DynamicModel(model)
    new_in, new_out = dm.rows(batch.new_tokens)
    model.resize_token_embeddings(dm.n_base + len(batch.new_tokens), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[dm.n_base:] = new_in
    short = [t for t in batch.new_tokens if len(t.parts) <= TINY_NET["max_pieces"]]
    assert len(short) == len(batch.new_tokens), "a token longer than max_pieces would differ from FVT"
    x = torch.tensor([s[:width] for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()
    # the step's softmax holds only the new tokens that occur in the trained part: drop the others
    kept = sorted({i for s in seqs for i in s[:width] if i >= dm.n_base})
    cols = list(range(dm.n_base)) + kept
    ref_kept = torch.nn.functional.cross_entropy(logits[..., cols].reshape(-1, len(cols)),
                                                 torch.tensor([[cols.index(i) for i in s[1:width]] for s in seqs]).reshape(-1)).item()
    assert got["lm"].item() == pytest.approx(ref_kept, rel=1e-4)
    assert ref_kept <= ref + 1e-6  # fewer competitors, never a higher loss


def test_prefill_step_is_mode_a_of_the_batch(tiny_model_dirs, tmp_path):
    """The prefill objective at a fixed cut (the middle) and merge budget: its loss is the mean
    cross-entropy of the continuation tokens over BASE's vocabulary under transformers' model with
    the contexts' FVT rows appended (an untrained residual hypernetwork is FVT), and the same
    bits as `score_batch`'s mode A on those texts."""
    import copy
    import math

    from tokensurgery.hypernets import Trainer
    from tokensurgery.hypernets.dynamic import context_cut

    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "hn",
                      tiny_config(tokenizers="merges", objective="prefill", seq_len=200), TINY_NET, progress=False)
    trainer.batch_texts = lambda step, micro: list(TEXTS)  # short texts: no segment is cut off at seq_len
    got = trainer.prefill_step(0, 0, at=0.5, reduction=0.3)
    merger = trainer.mergers[0]
    n, vocab = merger.n_base, merger.vocab
    segs = [merger.segments(t) for t in TEXTS]
    cuts = [context_cut(s, vocab) for s in segs]
    ctx = merger.merge_segments([s[:k] for s, k in zip(segs, cuts)], reduction=0.3)
    assert ctx.new_tokens and got["active"] == len({i for ids in ctx.ids for i in ids if i >= n})
    model = copy.deepcopy(trainer.lm.model)
    dm = DynamicModel(model)
    new_in, _ = dm.rows(ctx.new_tokens)
    grown = copy.deepcopy(model)
    grown.resize_token_embeddings(n + len(ctx.new_tokens), mean_resizing=False)
    with torch.no_grad():
        grown.get_input_embeddings().weight[n:] = new_in
    start, nll, count = start_token(vocab), 0.0, 0
    for ids, s, k in zip(ctx.ids, segs, cuts):
        rest = [t for seg in s[k:] for t in seg]
        x = torch.tensor([[start] + ids + rest])
        with torch.no_grad():
            logits = grown(input_ids=x).logits[0, len(ids) : len(ids) + len(rest), :n]  # BASE's softmax only
        nll += torch.nn.functional.cross_entropy(logits, torch.tensor(rest), reduction="sum").item()
        count += len(rest)
    assert got["lm"].item() == pytest.approx(nll / count, rel=1e-4)
    score = score_batch(DynamicModel(trainer.lm.model), merger, TEXTS, reduction=0.3)
    assert score.bits_a * math.log(2) == pytest.approx(nll, rel=1e-4)
    with pytest.raises(TokenSurgeryError, match="objective"):
        tiny_config(objective="prefill").check()  # unigram tokenizers have no merged batches


def test_prefill_step_trains_for_the_tail_and_whole_chars(tiny_model_dirs, tmp_path):
    """With `tail` and `whole_chars` the prefill step's loss is `score_batch`'s mode A with the
    same tail and a whole-characters merger; the tail changes it; both are refused where they
    would do nothing."""
    import math

    from tokensurgery.hypernets import Trainer
    from tokensurgery.hypernets.dynamic import context_cut

    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    losses = {}
    for tail in (0, 2):
        config = tiny_config(tokenizers="merges", objective="prefill", seq_len=200, tail=tail, whole_chars=True)
        trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / f"hn{tail}", config, TINY_NET, progress=False)
        trainer.batch_texts = lambda step, micro: list(TEXTS)
        got = trainer.prefill_step(0, 0, at=0.5, reduction=0.3)
        vocab, n = trainer.base_vocab, trainer.mergers[0].n_base
        segs = [BatchMerger(vocab, n_base=n).segments(t) for t in TEXTS]
        count = sum(len(seg) for s in segs for seg in s[context_cut(s, vocab):])
        for whole in (True, False):
            score = score_batch(DynamicModel(trainer.lm.model), BatchMerger(vocab, n_base=n, whole_chars=whole),
                                TEXTS, reduction=0.3, tail=tail)
            losses[tail, whole] = score.bits_a * math.log(2) / count
        assert got["lm"].item() == pytest.approx(losses[tail, True], rel=1e-4)
    # the test has teeth: the tail and whole characters each change the loss
    assert losses[0, True] != pytest.approx(losses[2, True], rel=1e-6)
    assert losses[0, True] != pytest.approx(losses[0, False], rel=1e-6)
    with pytest.raises(TokenSurgeryError, match="tail keeps the end of prefill contexts"):
        tiny_config(tokenizers="merges", tail=2).check()  # objective whole: no contexts
    with pytest.raises(TokenSurgeryError, match="merged batches"):
        tiny_config(whole_chars=True).check()
    with pytest.raises(TokenSurgeryError, match="tail must be"):
        tiny_config(tokenizers="merges", objective="both", tail=-1).check()


def test_merge_training_draws_a_boundary_per_step(tiny_model_dirs, tmp_path):
    """`boundary="sentence,word"`: each step merges with the boundary its (seed, step) draws,
    and both occur; an unknown boundary is refused."""
    from tokensurgery.hypernets import Trainer
    from tokensurgery.hypernets.train import _rng

    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    config = tiny_config(tokenizers="merges", seq_len=40, boundary="sentence,word")
    trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "hn", config, TINY_NET, progress=False)
    assert [m.boundary for m in trainer.mergers] == ["sentence", "word"]
    used, calls = [], []

    class Spy(type(trainer.mergers[0])):
        def __call__(self, texts, merges=None, reduction=None):
            calls.append(self.boundary)
            return super().__call__(texts, merges=merges, reduction=reduction)

    for m in trainer.mergers:
        m.__class__ = Spy  # records which merger each step calls
    for step in range(12):
        trainer.merge_step(step, 0)
        used.append(["sentence", "word"][_rng(trainer.config, step, 0, 0).randrange(2)])
    assert calls == used and set(used) == {"sentence", "word"}
    with pytest.raises(TokenSurgeryError, match="boundary"):
        tiny_config(boundary="pretokens,line").check()


def test_mixed_training_runs_both_kinds_and_its_hypernetwork_scores(tiny_model_dirs, tmp_path):
    from tokensurgery.hypernets import train
    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    result = train(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "hn", tiny_config(
        tokenizers="mixed", steps=8, warmup_steps=1, lr=3e-3, seq_len=32), TINY_NET, progress=False)
    phases = {h.get("phase") for h in result.history}
    assert {"merges", "lm"} <= phases, phases
    dm = DynamicModel(load_causal_lm(tiny_model_dirs["tied"])[0], hypernet=str(tmp_path / "hn"))
    vocab = open_vocabulary(tiny_model_dirs["tied"])
    score = score_batch(dm, BatchMerger(vocab, n_base=dm.n_base), TEXTS, merges=20)
    assert score.new_tokens > 0 and score.bits_b > 0
    with pytest.raises(TokenSurgeryError, match="tokenizers"):
        tiny_config(tokenizers="bpe").check()
    with pytest.raises(TokenSurgeryError, match="base"):  # a hypernetwork trained for another base model
        DynamicModel(load_causal_lm(tiny_model_dirs["untied"])[0], hypernet=str(tmp_path / "hn"))


def test_train_objective_both_from_the_cli(tiny_model_dirs, tmp_path):
    """`--objective both` draws whole and prefill steps; without the output anchor, prefill steps
    leave the output head's weights as they are; the anchor term measures the output rows' distance
    from the `--init` hypernetwork's and joins the loss with its weight; `--objective` with unigram
    tokenizers is refused with one line."""
    from safetensors.torch import load_file

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines(20_000, langs=("en",))))
    common = ["--corpus", str(corpus), "--batch-size", "2", "--seq-len", "32", "--hypernet-layers", "1",
              "--max-pieces", "4", "--lr", "3e-3", "--save-every", "100"]
    runner = CliRunner()
    r = runner.invoke(cli, ["hypernet", "train", str(tiny_model_dirs["tied"]), str(tmp_path / "hn"), "--tokenizers", "merges",
                            "--objective", "both", "--steps", "8", *common])
    assert r.exit_code == 0, r.output
    log = [json.loads(line) for line in (tmp_path / "hn" / "training_log.jsonl").read_text().splitlines()]
    assert {h.get("phase") for h in log} == {"merges", "prefill"}
    r = runner.invoke(cli, ["hypernet", "train", str(tiny_model_dirs["tied"]), str(tmp_path / "free"), "--tokenizers",
                            "merges", "--objective", "prefill", "--output-anchor", "0", "--steps", "4", "--init",
                            str(tmp_path / "hn"), "--tail", "2", "--whole-chars", *common])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "free" / "training.json").read_text())["config"]
    assert saved["tail"] == 2 and saved["whole_chars"] is True
    before, free = (load_file(str(tmp_path / d / "hypernet.safetensors")) for d in ("hn", "free"))
    out_head = [k for k in before if "output" in k]
    assert out_head and all(torch.equal(before[k], free[k]) for k in out_head)
    assert any(not torch.equal(before[k], free[k]) for k in before if "input" in k)
    # the anchor term: 0 while the output rows are the --init hypernetwork's, whatever the input
    # head does; positive once the output head moves; added to the LM loss with its weight
    from tokensurgery.hypernets import Trainer

    from test_hypernet import TINY_NET, tiny_config, tiny_corpus

    config = tiny_config(tokenizers="merges", objective="prefill", output_anchor=3.0, seq_len=32, init=str(tmp_path / "hn"))
    trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "api", config, TINY_NET, progress=False)
    with torch.no_grad():
        torch.manual_seed(0)
        trainer.hypernet.head_input.weight.add_(0.05 * torch.randn_like(trainer.hypernet.head_input.weight))
    got = trainer.prefill_step(0, 0)
    assert got["anchor"].item() == pytest.approx(0.0, abs=1e-10) and got["lm"].item() > 0
    with torch.no_grad():
        trainer.hypernet.head_output.weight.add_(0.05 * torch.randn_like(trainer.hypernet.head_output.weight))
    got = trainer.prefill_step(0, 0)
    assert got["anchor"].item() > 1e-4
    assert got["loss"].item() == pytest.approx(got["lm"].item() + 3.0 * got["anchor"].item(), rel=1e-6)
    r = runner.invoke(cli, ["hypernet", "train", str(tiny_model_dirs["tied"]), str(tmp_path / "bad"), "--objective", "prefill",
                            *common])
    assert r.exit_code != 0 and "objective 'prefill' trains on merged batches" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bad").exists()


# ---- a grown vocabulary and generation -----------------------------------------------------------

@pytest.fixture(scope="module")
def grown(models, tmp_path_factory):
    from tokensurgery.hypernets.dynamic.grow import GrownVocabulary, grow

    model, vocab = models["untied"]
    g = grow(DynamicModel(model), vocab, corpus_lines(20_000, langs=("en", "de")), 900)
    folder = g.save(tmp_path_factory.mktemp("grown"))
    return GrownVocabulary.load(folder, n_base=g.n_base), folder


def test_grown_tokens_are_spelled_by_base_and_reload(grown, models):
    from tokensurgery.hypernets.dynamic.grow import GrownVocabulary

    g, folder = grown
    model, vocab = models["untied"]
    assert len(g.tokens) > 50
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for t, a, b in zip(g.tokens, g.input, g.output):
        assert vocab.decode_bytes(t.parts) == t.surface and t.surface not in vocab.by_bytes
        assert torch.allclose(a, w_in[list(t.parts)].mean(0), atol=1e-6)  # FVT rows without a hypernetwork
        assert torch.allclose(b, w_out[list(t.parts)].mean(0), atol=1e-6)
    with pytest.raises(TokenSurgeryError, match="grown for a model"):
        GrownVocabulary.load(folder, n_base=g.n_base + 1)
    with pytest.raises(TokenSurgeryError, match="not a grown vocabulary"):
        GrownVocabulary.load(folder / "missing")


@pytest.mark.parametrize("name", ["tied", "gemma3"])
def test_plain_generation_is_transformers_greedy(models, name):
    from tokensurgery.hypernets.dynamic.generate import generate

    model, vocab = models[name]
    prompt = "The cat sat on"
    got = generate(DynamicModel(model), vocab, prompt, max_new_bytes=40, stop_at_eos=False)
    ids = torch.tensor([[start_token(vocab)] + vocab.encode(prompt)])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(got.tokens), do_sample=False,
                         eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert got.tokens == ref and got.text == vocab.decode_bytes(ref)[:40]


@pytest.mark.parametrize("name", ["tied", "gemma3"])
def test_generation_after_a_merged_prompt(models, name):
    """A merged prompt's prefill reads its new tokens' rows, then decoding is greedy over
    BASE: the same as transformers' greedy decoding of the model whose input matrix was grown
    by those rows, with the new ids suppressed at the output. No merges (or every segment
    kept as tail) is plain generation."""
    import copy

    from tokensurgery.hypernets.dynamic.generate import generate, generate_many

    model, vocab = models[name]
    dm = DynamicModel(model)
    merger = BatchMerger(vocab, n_base=dm.n_base)
    prompt = "The cat sat on the mat and the cat sat on the hat, the cat"
    plain = generate(dm, vocab, prompt, max_new_bytes=40, stop_at_eos=False)
    for kw in ({"merges": 0}, {"merges": 30, "tail": 1000}):
        same = generate(dm, vocab, prompt, max_new_bytes=40, stop_at_eos=False, merger=merger, **kw)
        assert same.tokens == plain.tokens and same.prompt_tokens_read == same.prompt_tokens == plain.prompt_tokens
    prompts = [prompt, "Der Hund und die Katze und der Hund", TEXTS[1]]
    for batch, kw in (([prompt], {"merges": 30}), (prompts, {"reduction": 0.3, "tail": 2})):
        got = generate_many(dm, vocab, batch, max_new_bytes=40, stop_at_eos=False, merger=merger, **kw)
        merged = merger(batch, **kw)  # the prompts are merged together
        assert merged.new_tokens and [g.prompt_tokens_read for g in got] == list(map(len, merged.ids))
        assert sum(g.prompt_tokens_read for g in got) < sum(g.prompt_tokens for g in got)
        new_in, _ = dm.rows(merged.new_tokens)
        big = copy.deepcopy(model)
        n = dm.n_base
        big.resize_token_embeddings(n + len(merged.new_tokens), mean_resizing=False)
        with torch.no_grad():
            big.get_input_embeddings().weight[n:] = new_in
        for g, read in zip(got, merged.ids):
            ids = torch.tensor([[start_token(vocab)] + read])
            ref = big.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(g.tokens), do_sample=False,
                               eos_token_id=None, pad_token_id=0,
                               suppress_tokens=list(range(n, n + len(merged.new_tokens))))[0, ids.shape[1]:].tolist()
            assert g.tokens == ref and g.text == vocab.decode_bytes(ref)[:40]
    # `decode` continues some of the prompts; all of them are merged together as before
    some = generate_many(dm, vocab, prompts, max_new_bytes=40, stop_at_eos=False, merger=merger, decode=[2], **kw)
    assert len(some) == 1 and some[0].tokens == got[2].tokens and some[0].prompt_tokens_read == got[2].prompt_tokens_read
    with pytest.raises(TokenSurgeryError, match="prompt indices are 0..2"):
        generate_many(dm, vocab, prompts, max_new_bytes=4, decode=[3])
    other = BatchMerger(vocab, n_base=dm.n_base + 1)
    with pytest.raises(TokenSurgeryError, match="another vocabulary"):
        generate(dm, vocab, prompt, max_new_bytes=4, merger=other, merges=3)


def test_grown_generation_is_greedy_over_the_grown_model(models, grown):
    """Exact output layer over BASE + grown rows = transformers' greedy decoding of the model
    whose embedding matrices were grown by those rows; the ANN layers find the exact top
    candidate most of the time."""
    import copy
    import dataclasses

    from tokensurgery.hypernets.dynamic.generate import OutputLayer, generate

    g, _ = grown
    g = dataclasses.replace(g, output=g.output * 4)  # FVT rows seldom win; larger ones do, so grown tokens are chosen
    model, vocab = models["untied"]
    big = copy.deepcopy(model)
    big.resize_token_embeddings(len(g), mean_resizing=False)
    with torch.no_grad():
        big.get_input_embeddings().weight[g.n_base:] = g.input
        big.get_output_embeddings().weight[g.n_base:] = g.output
    prompt = "Der Hund und die Katze"
    got = generate(DynamicModel(model), vocab, prompt, max_new_bytes=60, grown=g, stop_at_eos=False)
    ids = torch.tensor([[start_token(vocab)] + vocab.encode(prompt)])
    ref = big.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(got.tokens), do_sample=False,
                       eos_token_id=None, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert got.tokens == ref and any(t >= g.n_base for t in got.tokens), got.tokens
    rows = torch.cat([model.get_output_embeddings().weight.detach(), g.output])
    exact = OutputLayer(rows, "exact", candidates=5)
    queries = torch.randn(50, rows.shape[1])
    for ann in ("hnsw", "ivf"):
        layer = OutputLayer(rows, ann, candidates=5, nprobe=64)
        hits = sum(int(exact.top(q)[0]) in layer.top(q).tolist() for q in queries)
        assert hits >= 45, (ann, hits)
    with pytest.raises(TokenSurgeryError, match="ann"):
        OutputLayer(rows, "annoy")


def committed_merges_hypernets() -> list[str]:
    """The results/hypernet_smollm2_merges* folders that claim weights: every one whose README's
    title does not say "record only". Found from the folders, not listed by hand, so a README that
    promises weights git never took (.gitignore needs an exception per file) fails the test below."""
    from pathlib import Path

    results = Path(__file__).resolve().parent.parent / "results"
    return sorted(p.name for p in results.glob("hypernet_smollm2_merges*")
                  if "record only" not in (p / "README.md").read_text(encoding="utf-8").splitlines()[0])


@pytest.mark.real
@pytest.mark.parametrize("name", committed_merges_hypernets())
def test_committed_merges_hypernet_is_for_the_bundled_smollm2(smollm2_dir, smollm2_vocab, name):
    """Each committed merges hypernetwork (results/<name>, bfloat16 weights) loads onto the
    bundled SmolLM2 (its fingerprint check passes) and is trained: its rows for merged tokens
    are not FVT's."""
    from pathlib import Path

    from tokensurgery.hypernets.dynamic.merger import NewToken

    folder = Path(__file__).resolve().parent.parent / "results" / name
    model, _ = load_causal_lm(smollm2_dir)
    trained, fvt = DynamicModel(model, hypernet=str(folder)), DynamicModel(model)
    words = [" the history", " of the", "ing the", " Straße"]
    tokens = [NewToken(w.encode(), tuple(smollm2_vocab.encode(w))) for w in words]
    assert all(len(t.parts) >= 2 for t in tokens)
    (a_in, a_out), (b_in, b_out) = trained.rows(tokens), fvt.rows(tokens)
    assert a_in.shape == b_in.shape == (len(words), model.config.hidden_size)
    rel = (a_in - b_in).norm(dim=-1) / b_in.norm(dim=-1)
    assert (rel > 0.01).all(), rel
