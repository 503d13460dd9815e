"""Byte-level ensembles: models with different tokenizers combined one byte at a time.

Every `ByteLM` gives an exact next-byte distribution, so models that share no vocabulary
agree on the space they predict in. `mix` averages the distributions (weights sum to 1);
`product` multiplies them (a weighted sum of log-probabilities) and renormalises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tokensurgery.errors import TokenSurgeryError

from .byte_lm import ByteLM, ByteScore, draw_byte
from .cover_tree import EOS

MODES = ("mix", "product")


def combine(logprobs: Sequence[np.ndarray], weights: np.ndarray, mode: str) -> np.ndarray:
    """Combine log next-byte distributions (same shape, last axis 257) into one."""
    stack = np.stack(logprobs)
    w = weights.reshape((-1,) + (1,) * (stack.ndim - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        if mode == "mix":
            top = _finite(np.max(stack, axis=0))  # a byte no model can produce stays at -inf, not nan
            out = top + np.log(np.sum(w * np.exp(stack - top), axis=0))
        else:
            out = np.sum(np.where(w > 0, w * stack, 0.0), axis=0)
        top = _finite(np.max(out, axis=-1, keepdims=True))
        return out - (top + np.log(np.sum(np.exp(out - top), axis=-1, keepdims=True)))


def _finite(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, 0.0)


@dataclass
class ByteEnsemble:
    """Several `ByteLM`s read as one next-byte model."""

    models: list[ByteLM]
    weights: np.ndarray
    mode: str = "mix"

    def next_byte_logprobs(self, prefix: str | bytes, context: str | bytes = b"") -> np.ndarray:
        return combine([m.next_byte_logprobs(prefix, context) for m in self.models], self.weights, self.mode)

    def distributions(self, text: str | bytes, context: str | bytes = b"") -> np.ndarray:
        return combine([m.distributions(text, context) for m in self.models], self.weights, self.mode)

    def score(self, text: str | bytes, context: str | bytes = b"", eos: bool = False) -> ByteScore:
        data = ByteLM._bytes(text)
        dist = self.distributions(data, context)
        picked = dist[np.arange(len(data)), np.frombuffer(data, dtype=np.uint8)] if data else np.zeros(0)
        return ByteScore.of(picked, float(dist[-1, EOS]) if eos else None)

    def generate(self, prompt: str | bytes = b"", max_new_bytes: int = 64, temperature: float = 1.0,
                 seed: int | None = None, as_bytes: bool = False):
        """Sample byte by byte from the combined distribution (temperature on bytes)."""
        rng = np.random.default_rng(seed)
        streams = [m.stream(prompt) for m in self.models]
        out = bytearray()
        while len(out) < max_new_bytes:
            b = draw_byte(combine([s.logprobs() for s in streams], self.weights, self.mode), temperature, rng)
            if b == EOS:
                break
            out.append(b)
            for s in streams:
                s.advance(b)
        return bytes(out) if as_bytes else bytes(out).decode("utf-8", "replace")


def ensemble(models: Sequence[ByteLM], mode: str = "mix", weights: Sequence[float] | None = None) -> ByteEnsemble:
    """Combine `ByteLM`s with any tokenizers at the byte level (`mode` "mix" or "product")."""
    if mode not in MODES:
        raise TokenSurgeryError(f"ensemble mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not models:
        raise TokenSurgeryError("an ensemble needs at least one model")
    w = np.full(len(models), 1.0 / len(models)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(models),) or (w < 0).any() or w.sum() <= 0:
        raise TokenSurgeryError(f"weights must be {len(models)} non-negative numbers, not all zero; got {list(w)}")
    if mode == "mix":
        w = w / w.sum()
    return ByteEnsemble(list(models), w, mode)
