"""Bits per byte, checked against an independent computation with transformers directly."""

from __future__ import annotations

import math

import pytest
import torch

from tokensurgery.assets import corpus_text
from tokensurgery.evaluate import bos_id, load_causal_lm, score_text


def reference_bits(model, tokenizer, text: str) -> float:
    """Total -log2 p of the text in one forward pass, via transformers' own loss."""
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # mean over the ids.shape[1]-1 predictions
    return loss * (ids.shape[1] - 1) / math.log(2)


@pytest.mark.parametrize("which", ["tied", "bos"])
def test_tiny_matches_transformers(tiny_model_dirs, which):
    model, tok = load_causal_lm(tiny_model_dirs[which])
    assert (bos_id(tok) is not None) == (which == "bos")
    text = corpus_text("en", 600)
    ours = score_text(model, tok, text, window=4096, stride=4096, progress=False)
    assert ours.n_bytes == len(text.encode())
    assert ours.bits == pytest.approx(reference_bits(model, tok, text), rel=1e-5)


def test_windows_carry_context(tiny_model_dirs):
    """Short overlapping windows give a finite figure close to the single-window one, and the
    batching/padding does not change the result."""
    model, tok = load_causal_lm(tiny_model_dirs["bos"])
    text = corpus_text("de", 1500)
    a = score_text(model, tok, text, window=64, stride=32, batch_size=1, progress=False)
    b = score_text(model, tok, text, window=64, stride=32, batch_size=8, progress=False)
    assert a.bits == pytest.approx(b.bits, rel=1e-5)
    assert a.n_tokens == len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_real_models_match_transformers(which, smollm2_dir, gemma_dir):
    model, tok = load_causal_lm({"smollm2": smollm2_dir, "gemma": gemma_dir}[which])
    assert (bos_id(tok) is not None) == (which == "gemma")  # Gemma-3 needs its <bos>
    text = corpus_text("en", 1500)
    ours = score_text(model, tok, text, window=1024, stride=1024, progress=False)
    assert ours.bits == pytest.approx(reference_bits(model, tok, text), rel=1e-4)
    assert 0.8 < ours.bits_per_byte < 2.0
