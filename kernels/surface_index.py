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


class SurfaceIndex:
    """Token ids sorted by surface bytes, with the byte at each offset as a matrix.

    `ids[r]` is the token at sorted position `r`; `next_byte[r, k]` is byte `k` of its
    surface, or -1 past its end; `span_end[r]`: rows r..span_end[r]-1 are the tokens whose
    surface starts with token r's. Only ids in `members` are indexed.
    """

    def __init__(self, surface: Sequence[bytes], members: Sequence[int]):
        order = sorted((surface[i], i) for i in members if surface[i])
        self.surfaces: list[bytes] = [s for s, _ in order]
        self.ids = np.array([i for _, i in order], dtype=np.int64)
        self.max_len = max((len(s) for s in self.surfaces), default=0)
        self.next_byte = np.full((len(order), self.max_len + 1), -1, dtype=np.int16)
        for r, s in enumerate(self.surfaces):
            self.next_byte[r, : len(s)] = np.frombuffer(s, dtype=np.uint8)
        self.span_end = np.full(len(order), len(order), dtype=np.int64)
        open_rows: list[int] = []  # rows whose surface is a prefix of the current one
        for r, s in enumerate(self.surfaces):
            while open_rows and not s.startswith(self.surfaces[open_rows[-1]]):
                self.span_end[open_rows.pop()] = r
            open_rows.append(r)
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
