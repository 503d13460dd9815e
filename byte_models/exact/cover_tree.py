"""The cover tree: valid token sequences whose bytes run along a byte string.

A node is a valid token sequence (after the model's context) whose bytes are the first
`end` bytes of the text. For a byte prefix x, the sequences that *cover* x are a node at
some end j <= len(x) followed by one token whose surface starts with x[j:] (the
Byte-Token Representation Lemma of Phan et al. 2024): P(x) is the sum of their
probabilities. A node's next-token distribution therefore gives, for every offset k past
its end, the mass it puts on each next byte after x[j:j+k] (`node_groups`); summing those
over the nodes that reach a position gives the exact next-byte distribution there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.surface_index import SurfaceIndex

EOS = 256  # index of end-of-sequence in a next-byte distribution (bytes are 0..255)


class ZeroProbability(TokenSurgeryError):
    """The byte prefix cannot be produced by any valid token sequence of this model."""


@dataclass(eq=False)
class Node:
    """One valid token sequence; `logp` is its log-probability after the context.

    `probs` (next-token probabilities in SurfaceIndex order, tokens that may not follow at 0)
    and `cum` (their cumulative sums with a leading 0) are None until the node is evaluated.
    The zeroing of invalid tokens is deferred until they are first read (`set_distribution`),
    so nodes evaluated ahead of time that the text never reaches never pay for the validity
    rule of their last token."""

    parent: "Node | None"
    token: int | None
    end: int
    logp: float
    tail: tuple
    depth: int = 0
    children: dict = field(default_factory=dict, repr=False)
    eos: float = 0.0
    slot: int = -1  # the KV-cache slot of this node's last token (TreeLM), -1 when not cached
    _probs: np.ndarray | None = field(default=None, repr=False)
    _cum: np.ndarray | None = field(default=None, repr=False)
    _invalid: Callable[[], np.ndarray] | None = field(default=None, repr=False)  # positions still to zero

    @property
    def evaluated(self) -> bool:
        return self._probs is not None

    @property
    def probs(self) -> np.ndarray | None:
        if self._invalid is not None:
            self._finish()
        return self._probs

    @property
    def cum(self) -> np.ndarray | None:
        if self._invalid is not None:
            self._finish()
        return self._cum

    def _finish(self) -> None:
        invalid, self._invalid = self._invalid(), None
        if len(invalid):
            self._probs[invalid] = 0.0
        self._cum = np.concatenate([[0.0], np.cumsum(self._probs)])

    def forget(self) -> None:
        """Drop the distribution (memory); the node reads as not evaluated again."""
        self._probs = self._cum = self._invalid = None

    def path(self) -> list[int]:
        out, n = [], self
        while n.parent is not None:
            out.append(n.token)
            n = n.parent
        return out[::-1]


def _NOTHING_INVALID() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def set_distribution(node: Node, probs: np.ndarray, eos: float, invalid: Callable[[], np.ndarray] | None = None) -> None:
    """Give `node` its next-token distribution; `invalid()` gives the SurfaceIndex positions
    of tokens that may not follow it, zeroed when the distribution is first read."""
    node._probs, node.eos, node._cum = probs, eos, None
    node._invalid = invalid if invalid is not None else _NOTHING_INVALID


def node_groups(index: SurfaceIndex, node: Node, rest: bytes) -> np.ndarray | None:
    """Mass (relative to the node) on each next byte after `rest` = text[node.end:pos], from
    tokens whose surface starts with `rest` and goes on; EOS too when `rest` is empty.
    None when no token continues `rest`."""
    lo, hi = index.range(rest)
    if hi <= lo:
        return None
    k = len(rest)
    out = np.zeros(EOS + 1)
    if k <= index.max_len:
        nb = index.next_byte[lo:hi, k]
        bounds = lo + np.searchsorted(nb, np.arange(-1, 257), side="left")  # nb is sorted within the range
        out[:256] = node.cum[bounds[2:]] - node.cum[bounds[1:-1]]
    if k == 0:
        out[EOS] = node.eos
    return out


class Accumulator:
    """Per-position sums of scaled next-byte masses, kept in log scale (products of many
    token probabilities underflow float64 after a few hundred bytes)."""

    def __init__(self, positions: int):
        self.mass = np.zeros((positions, EOS + 1))
        self.scale = np.full(positions, -np.inf)

    def add(self, pos: int, logw: float, groups: np.ndarray) -> None:
        if logw == -np.inf:
            return
        if logw > self.scale[pos]:
            if self.scale[pos] > -np.inf:
                self.mass[pos] *= np.exp(self.scale[pos] - logw)
            self.scale[pos] = logw
        self.mass[pos] += np.exp(logw - self.scale[pos]) * groups

    def log_distributions(self) -> np.ndarray:
        """Normalised log next-byte distributions, one row per position."""
        with np.errstate(divide="ignore", invalid="ignore"):
            total = self.mass.sum(-1, keepdims=True)
            return np.log(self.mass) - np.log(total)
