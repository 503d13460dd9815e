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

import numpy as np

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.surface_index import SurfaceIndex

EOS = 256  # index of end-of-sequence in a next-byte distribution (bytes are 0..255)


class ZeroProbability(TokenSurgeryError):
    """The byte prefix cannot be produced by any valid token sequence of this model."""


@dataclass(eq=False)
class Node:
    """One valid token sequence; `logp` is its log-probability after the context."""

    parent: "Node | None"
    token: int | None
    end: int
    logp: float
    tail: tuple
    depth: int = 0
    children: dict = field(default_factory=dict, repr=False)
    probs: np.ndarray | None = field(default=None, repr=False)  # next-token probs in SurfaceIndex order, invalid = 0
    cum: np.ndarray | None = field(default=None, repr=False)  # cumulative sums of probs, with a leading 0
    eos: float = 0.0
    committed: bool = False
    trunk_pos: int = -1  # committed nodes: trunk length up to and including this node

    def path(self) -> list[int]:
        out, n = [], self
        while n.parent is not None:
            out.append(n.token)
            n = n.parent
        return out[::-1]


def set_distribution(node: Node, probs: np.ndarray, eos: float) -> None:
    node.probs = probs
    node.cum = np.concatenate([[0.0], np.cumsum(probs)])
    node.eos = eos


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
