"""Bits per byte of a byte-level model (hierarchical or flat) on a text, as a `Score` whose
positions are backbone positions (words, or bytes the delete gate kept).

The text is cut into non-overlapping windows (of words for a hierarchical model, of bytes for
a flat one), each scored from its own start, so the number is comparable to a subword model
scored with non-overlapping windows of about the same number of bytes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tokensurgery.evaluate import Score

from .flat import BOS, FlatByteLM
from .hierarchical import HierarchicalLM


@torch.no_grad()
def score_bytes(model: HierarchicalLM | FlatByteLM, data: bytes, window: int | None = None) -> Score:
    """Score `data` in windows of `window` words (hierarchical, default 128) or bytes (flat,
    default 512)."""
    was_training = model.training
    model.eval()
    nats, positions = 0.0, 0
    if isinstance(model, HierarchicalLM):
        words, window = model.words_of(data), window or 128
        for s in range(0, len(words), window):
            chunk = words[s : s + window]
            nats += model.nats([chunk])[0].item()
            positions += len(chunk)
    else:
        window = window or 512
        device = model.lm.device
        for s in range(0, len(data), window):
            x = torch.tensor([[BOS] + list(data[s : s + window])], device=device)
            logits, p = model.logits(x[:, :-1])
            nats += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
            positions += x.shape[1] - 1 if p is None else int((p <= 0.5).sum())
    model.train(was_training)
    return Score("text", len(data), positions, nats / math.log(2))
