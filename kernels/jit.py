"""`njit`: numba's compiler with its on-disk cache where numba finds somewhere to write it
(beside the source, or its user-wide folder), and without it where it does not (a read-only
install with no writable home: then each process compiles the kernel again, ~1 s).
numba must be importable; callers fall back to torch when it is not."""

from __future__ import annotations


def njit(**options):
    """Decorator: `numba.njit(cache=True, **options)`, or without the cache when numba has no
    writable place for it (it raises at decoration time then)."""
    import numba

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return wrap
