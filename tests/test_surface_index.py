"""SurfaceIndex against brute force on random byte strings (shared prefixes, 0xff runs)."""

from __future__ import annotations

import random

from tokensurgery.kernels.surface_index import SurfaceIndex


def test_ranges_and_spans_match_brute_force():
    rng = random.Random(0)
    alphabet = b"ab\xff\x00"
    surface = list({bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 6))) for _ in range(300)})
    surface += [surface[3], b""]  # a duplicate surface (ties go by id) and an empty one (left out)
    index = SurfaceIndex(surface, range(len(surface)))
    assert list(zip(index.surfaces, index.ids.tolist())) == sorted((s, i) for i, s in enumerate(surface) if s)
    for r, s in enumerate(index.surfaces):
        assert bytes(b for b in index.next_byte[r] if b >= 0) == s and index.next_byte[r, len(s)] == -1
        assert index.position[index.ids[r]] == r
    for r, s in enumerate(index.surfaces):
        starts = [q for q, t in enumerate(index.surfaces) if q >= r and t.startswith(s)]
        assert starts == list(range(r, index.span_end[r])), s
    for prefix in [b"", b"a", b"\xff", b"\xff\xff", b"ab\xff", b"zz"] + surface[:50]:
        lo, hi = index.range(prefix)
        assert [q for q, t in enumerate(index.surfaces) if t.startswith(prefix)] == list(range(lo, hi)), prefix
