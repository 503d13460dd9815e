"""SurfaceIndex: text tokens sorted by their surface bytes, for byte-level cover walks.

All tokens whose surface starts with some bytes form one contiguous range of the sorted
order, and inside that range the byte at offset len(prefix) is non-decreasing. So "which
tokens could continue this byte prefix, grouped by their next byte" is a bisection plus a
difference of cumulative sums over a slice, with no per-token Python loop (see `byte_models/exact/cover_tree.py`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

import numpy as np


def _after_prefix(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _span_ends(matrix: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """For sorted rows, the first row after each that does not start with its bytes: the first
    q > r whose common prefix with its predecessor is shorter than row r (a prefix's
    extensions follow it contiguously), found for every r at once by binary lifting over a
    table of running minimums."""
    n = len(lens)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same = np.cumprod(matrix[1:] == matrix[:-1], axis=1)  # byte k equal and all before it
    lcp = np.concatenate([[-1], same.sum(axis=1)])  # lcp[q]: common prefix of rows q-1 and q
    lcp = np.append(lcp, -1)  # a sentinel at n that ends every span
    mins = [lcp]  # mins[j][q] = min(lcp[q : q + 2**j])
    while (1 << len(mins)) <= n + 1:
        prev, half = mins[-1], 1 << (len(mins) - 1)
        mins.append(np.minimum(prev[:-half], prev[half:]))
    pos = np.arange(1, n + 1)  # every span starts right after its row
    for j in range(len(mins) - 1, -1, -1):
        table = mins[j]
        ok = pos < len(table)
        step = np.zeros(n, dtype=bool)
        step[ok] = table[pos[ok]] >= lens[ok]
        pos = np.where(step, pos + (1 << j), pos)
    return pos.astype(np.int64)


class SurfaceIndex:
    """Token ids sorted by surface bytes, with the byte at each offset as a matrix.

    `ids[r]` is the token at sorted position `r`; `next_byte[r, k]` is byte `k` of its
    surface, or -1 past its end; `span_end[r]`: rows r..span_end[r]-1 are the tokens from row r on
    whose surface starts with token r's. Only ids in `members` are indexed.
    """

    def __init__(self, surface: Sequence[bytes], members: Sequence[int]):
        # vectorised (Gemma-3 has 262k tokens): the byte matrix first, sorted by its columns
        # (-1 past the end sorts a prefix before its extensions, as bytes compare), ties by id
        ids = np.array([i for i in members if surface[i]], dtype=np.int64)
        raw = [surface[i] for i in ids.tolist()]
        lens = np.array([len(b) for b in raw], dtype=np.int64)
        self.max_len = int(lens.max()) if len(lens) else 0
        matrix = np.full((len(ids), self.max_len + 1), -1, dtype=np.int16)
        if len(ids):
            rows = np.repeat(np.arange(len(ids)), lens)
            cols = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
            matrix[rows, cols] = np.frombuffer(b"".join(raw), dtype=np.uint8)
        order = np.lexsort((ids, *(matrix[:, k] for k in range(self.max_len, -1, -1))))
        self.ids, self.next_byte = ids[order], matrix[order]
        self.surfaces: list[bytes] = [raw[k] for k in order.tolist()]
        self.span_end = _span_ends(self.next_byte, lens[order])
        self.position = np.full(max(members, default=-1) + 1, -1, dtype=np.int64)
        self.position[self.ids] = np.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def range(self, prefix: bytes) -> tuple[int, int]:
        """Sorted positions [lo, hi) of the tokens whose surface starts with `prefix`."""
        if not prefix:
            return 0, len(self.ids)
        if len(prefix) > self.max_len:
            return 0, 0
        lo = bisect_left(self.surfaces, prefix)
        after = _after_prefix(prefix)
        hi = len(self.surfaces) if after is None else bisect_left(self.surfaces, after, lo)
        return lo, hi

    def exact(self, lo: int, hi: int, length: int) -> list[int]:
        """Sorted positions in [lo, hi) whose surface is exactly `length` bytes (the range's
        shortest members, so they come first)."""
        out = []
        r = lo
        while length <= self.max_len and r < hi and self.next_byte[r, length] == -1:
            out.append(r)
            r += 1
        return out
