"""Pieces: how the hypernetwork sees a new token — the base tokenizer's split of its bytes.

A token's surface bytes are split the way the base tokenizer splits them mid-text
(`Vocabulary.decompose`: word-start aware). Bytes the base cannot spell alone (SmolLM2 has
no token for 21 control bytes) become *fallback pieces*: ids `len(base) + byte`, which the
hypernetwork embeds with 256 learned vectors. At most `max_pieces` pieces are kept.
"""

from __future__ import annotations

import torch

from tokensurgery.vocabulary import Vocabulary

N_FALLBACK = 256


def split_missing(data: bytes, missing: frozenset[int]) -> list[tuple[bool, bytes]]:
    """`data` as runs of (spellable, bytes); unspellable runs are single bytes."""
    runs: list[tuple[bool, bytes]] = []
    start = 0
    for i, b in enumerate(data):
        if b in missing:
            if i > start:
                runs.append((True, data[start:i]))
            runs.append((False, data[i : i + 1]))
            start = i + 1
    if start < len(data):
        runs.append((True, data[start:]))
    return runs


class PieceSplitter:
    """Splits surface bytes into base ids (plus fallback ids) with a cache per surface."""

    def __init__(self, base: Vocabulary, max_pieces: int = 8, n_rows: int | None = None):
        self.base = base
        self.max_pieces = max_pieces
        self.n_base = n_rows or len(base)  # fallback ids start after the base's embedding rows
        self.missing = frozenset(base.missing_bytes)
        self._cache: dict[bytes, list[int]] = {}

    def __call__(self, data: bytes) -> list[int]:
        """Piece ids for one token's surface bytes (never empty for non-empty input)."""
        got = self._cache.get(data)
        if got is None:
            got = self._split(data)[: self.max_pieces]
            self._cache[data] = got
        return got

    def _split(self, data: bytes) -> list[int]:
        if not self.missing.intersection(data):
            ids = self.base.decompose(data)
            if self.base.decode_bytes(ids) == data:
                return ids
        out: list[int] = []
        for spellable, run in split_missing(data, self.missing):
            if spellable:
                ids = self.base.decompose(run)
                if self.base.decode_bytes(ids) == run:
                    out += ids
                    continue
            out += [self.n_base + b for b in run]  # what the base cannot spell exactly
        return out

    def batch(self, surfaces: list[bytes]) -> list[list[int]]:
        return [self(s) for s in surfaces]


def by_length(pieces: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group rows by piece count so the encoder runs without padding:
    [(row positions (n,), piece ids (n, length))] for each length present."""
    groups: dict[int, list[int]] = {}
    for r, p in enumerate(pieces):
        groups.setdefault(len(p), []).append(r)
    return [(torch.tensor(rows), torch.tensor([pieces[r] for r in rows], dtype=torch.long))
            for length, rows in sorted(groups.items())]
