"""`njit`: numba's compiler with its on-disk cache where numba finds somewhere to write it
(beside the source, or its user-wide folder), and without it where it does not (a read-only
install with no writable home: then each process compiles the kernel again, ~1 s).
numba must be importable for `njit`; callers fall back to torch when it is not. `numba_ready`
says which tensors the loops take."""

from __future__ import annotations

import torch


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


def numba_ready(*tensors: torch.Tensor) -> bool:
    """Whether the numba loops can take these tensors as they are: float32, contiguous, on the
    CPU, and no gradient wanted (the loops have no backward)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.dtype is torch.float32 and t.is_cpu and t.is_contiguous() for t in tensors)
