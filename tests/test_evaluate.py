"""Bits per byte, checked against an independent computation with transformers directly."""

from __future__ import annotations

import math

import pytest
import torch

from tokensurgery.assets import corpus_text
from tokensurgery.evaluate import load_causal_lm, score_text, windows
from tokensurgery.inputs import hf_tokenizer


def reference(model, tokenizer, text: str) -> tuple[float, int, int]:
    """(total -log2 p, bytes, tokens) of the text's scorable tokens in one forward pass, via
    transformers' own tokenizer and loss: with BOS every text token is predicted; without it
    the first token has no context, so it and its bytes are left out."""
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the ids.shape[1]-1 predictions
    n_bytes = len(text.encode())
    if ids.shape[1] == len(plain):  # no BOS
        n_bytes -= len(tokenizer.decode(plain[:1]).encode())
    return loss * (ids.shape[1] - 1) / math.log(2), n_bytes, ids.shape[1] - 1


@pytest.mark.parametrize("which", ["tied", "bos"])
def test_tiny_matches_transformers(tiny_model_dirs, which):
    model, vocab = load_causal_lm(tiny_model_dirs[which])
    tok = hf_tokenizer(tiny_model_dirs[which])
    assert (vocab.bos_added is not None) == (which == "bos")
    text = corpus_text("en", 600)
    bits, n_bytes, n_tokens = reference(model, tok, text)
    ours = score_text(model, vocab, text, window=4096, stride=4096, progress=False)
    assert (ours.n_bytes, ours.n_tokens) == (n_bytes, n_tokens)
    assert ours.bits == pytest.approx(bits, rel=1e-5)


@pytest.mark.parametrize("which", ["tied", "bos"])
@pytest.mark.parametrize("stride_of", ["window", "half", "one"])
def test_windowed_scores_every_token_once(tiny_model_dirs, which, stride_of):
    """Short windows (stride = window included) score every token exactly once and count the
    bytes of exactly those tokens; a text that fits one window scores as a single window."""
    model, vocab = load_causal_lm(tiny_model_dirs[which])
    text = corpus_text("de", 1200)
    ids = vocab.encode(text)
    bos = vocab.bos_added is not None
    window = 40
    stride = {"window": window, "half": window // 2, "one": 1}[stride_of]
    ours = score_text(model, vocab, text, window=window, stride=stride, progress=False)
    assert ours.n_tokens == len(ids) - (0 if bos else 1)
    assert ours.n_bytes == len(text.encode()) - (0 if bos else len(vocab.surface[ids[0]]))
    spans = windows(len(ids), window, stride, bos)
    scored = [i for s, e, n in spans for i in range(e - n, e)]
    assert scored == list(range(0 if bos else 1, len(ids)))  # each token once, in order
    assert all(e - n > s or bos for s, e, n in spans)  # without BOS a window's first token is context only
    # one window holding the whole text (any stride) = the single-window score
    whole = score_text(model, vocab, text, window=len(ids), stride=len(ids), progress=False)
    single = score_text(model, vocab, text, window=4096, stride=4096, progress=False)
    assert whole.bits == pytest.approx(single.bits, rel=1e-5) and whole.n_bytes == single.n_bytes


def test_windows_carry_context(tiny_model_dirs):
    """Overlapping windows give the same result whatever the batching/padding."""
    model, vocab = load_causal_lm(tiny_model_dirs["bos"])
    text = corpus_text("de", 1500)
    a = score_text(model, vocab, text, window=64, stride=32, batch_size=1, progress=False)
    b = score_text(model, vocab, text, window=64, stride=32, batch_size=8, progress=False)
    assert a.bits == pytest.approx(b.bits, rel=1e-5)
    assert a.n_tokens == len(vocab.encode(text))


@pytest.mark.real
@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_real_models_match_transformers(which, smollm2_dir, gemma_dir):
    folder = {"smollm2": smollm2_dir, "gemma": gemma_dir}[which]
    model, vocab = load_causal_lm(folder)
    tok = hf_tokenizer(folder)
    assert (vocab.bos_added is not None) == (which == "gemma")  # Gemma-3 needs its <bos>
    text = corpus_text("en", 1500)
    assert vocab.encode(text) == tok(text, add_special_tokens=False)["input_ids"]
    bits, n_bytes, n_tokens = reference(model, tok, text)
    ours = score_text(model, vocab, text, window=1024, stride=1024, progress=False)
    assert (ours.n_bytes, ours.n_tokens) == (n_bytes, n_tokens)
    assert ours.bits == pytest.approx(bits, rel=1e-4)
    assert 0.8 < ours.bits_per_byte < 2.0
