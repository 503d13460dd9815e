"""Narrow float32 matrix products on CPU: `nn.Linear` over a few rows, run as W @ X^T.

A decoder step feeds one to a few dozen tokens, so every `nn.Linear` of the model multiplies
its weight by a handful of rows. On CPU, float32, PyTorch's `linear` does that badly on the
2-core machine (it reports an AMD EPYC; an earlier Intel Xeon one ran plain `generate` faster
and was not timed this way): one row goes to a matrix-vector product that streams the weight
at about 11 GB/s, and 2 to 15 rows to a path slower still, while the same product written as
`W @ X^T` with at least two columns runs as a matrix product that streams it 2-6x faster
(ad hoc, SmolLM2's 49,152 x 576 output head: `linear` 11.8 ms for 1 row, 25.9 ms for 2;
`mm(W, X^T)` 4.1 ms for 2 rows, 15.1 ms for 16; never slower up to 512 rows). A small model's
step is bound by reading its weights, so the whole call gets faster (SmolLM2-135M, 1 token:
about 60 -> 40 ms).

`narrow_linear(model)` switches a model's plain `nn.Linear` layers to that form for the
duration of a `with` block (rows padded with zeros to 2, 4 or a multiple of 8, see `_width`).
Only modules whose type is exactly `nn.Linear` with float32 weights on the CPU are touched
(quantised or subclassed layers keep their own forward, and so do layers whose instance
already has one, such as accelerate's hooks); the results equal `linear`'s up to float32
rounding (the sums run in another order). It is meant for inference calls; it is not
thread-safe against other users of the same model during the block.

`narrow_mm(weight, x)` is the product itself. For 1 to `KERNEL_ROWS` rows it runs a small
numba kernel instead of MKL (ad hoc, SmolLM2-135M's 211 matrices, 2 cores: MKL 21 / 31 / 46 ms
for 2 / 4 / 8 rows, the kernel 18-20 / 18-20 / 29-35 ms: it reads every weight row once, near
the machine's ~30 GB/s, and keeps up to four dot products per pass over it, where MKL's
small-width kernels are compute-bound). Written by hand because neither torch nor MKL offers a
product of this shape that streams the weight once; without numba installed, MKL does it all.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .jit import numba_ready

KERNEL_ROWS = 12  # most rows the numba kernel takes (16 rows: MKL was faster, ad hoc)


def _width(rows: int) -> int:
    """Columns to run `rows` rows as: one column would be a matrix-vector product again, and
    column counts other than 2, 4 and multiples of 8 take slower kernels (ad hoc, SmolLM2-135M
    calls of 1-32 tokens: 15 tokens 147 ms, 16 tokens 95 ms)."""
    if rows <= 2:
        return 2
    if rows <= 4:
        return 4
    return -(-rows // 8) * 8


def _build_kernel():
    """The numba kernel, compiled on first use (cached on disk by numba); None without numba."""
    try:
        import numba
    except ImportError:
        return None
    from .jit import njit

    # `reassoc` lets LLVM vectorise the sums (results differ from MKL's by float32 rounding,
    # as MKL's differ from `linear`'s); no `nnan`/`ninf`, so NaN and inf still propagate.
    @njit(parallel=True, fastmath={"reassoc", "contract"})
    def wxt(W, X, out):  # out[k, o] = sum_i W[o, i] * X[k, i]
        n_out, n_in = W.shape
        w = X.shape[0]
        for o in numba.prange(n_out):
            row = W[o]
            k = 0
            while k + 4 <= w:  # four columns per pass: the row is read from memory once
                x0, x1, x2, x3 = X[k], X[k + 1], X[k + 2], X[k + 3]
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for i in range(n_in):
                    v = row[i]
                    s0 += v * x0[i]
                    s1 += v * x1[i]
                    s2 += v * x2[i]
                    s3 += v * x3[i]
                out[k, o], out[k + 1, o], out[k + 2, o], out[k + 3, o] = s0, s1, s2, s3
                k += 4
            if k + 2 <= w:
                x0, x1 = X[k], X[k + 1]
                s0 = s1 = np.float32(0.0)
                for i in range(n_in):
                    v = row[i]
                    s0 += v * x0[i]
                    s1 += v * x1[i]
                out[k, o], out[k + 1, o] = s0, s1
                k += 2
            if k < w:
                x0 = X[k]
                s0 = np.float32(0.0)
                for i in range(n_in):
                    s0 += row[i] * x0[i]
                out[k, o] = s0

    return wxt


_KERNEL: list = []  # [kernel or None], filled on first use
_LOCK = threading.Lock()  # numba's fallback threading layer (workqueue) must not be entered twice at once


def _kernel():
    if not _KERNEL:
        with _LOCK:
            if not _KERNEL:
                _KERNEL.append(_build_kernel())
    return _KERNEL[0]


def narrow_mm(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for a float32 CPU weight [out, in] and x [rows, in] (see the module
    docstring: the numba kernel for up to `KERNEL_ROWS` rows when no gradient is wanted, else
    MKL's W @ X^T)."""
    rows = x.shape[0]
    kernel = _KERNEL[0] if _KERNEL else _kernel()
    if kernel is not None and 0 < rows <= KERNEL_ROWS:
        x = x.contiguous()
        if numba_ready(weight, x):
            out = np.empty((rows, weight.shape[0]), np.float32)
            with _LOCK:
                kernel(weight.detach().numpy(), x.detach().numpy(), out)
            return torch.from_numpy(out)
    width = _width(rows)
    if width > rows:
        x = torch.cat([x, x.new_zeros(width - rows, x.shape[1])])
    return torch.mm(weight, x.t()).t()[:rows]


def _narrow_forward(module: torch.nn.Linear):
    weight, bias = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = narrow_mm(weight, x.reshape(-1, x.shape[-1]))
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], weight.shape[0])

    return forward


def narrow_modules(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The layers `narrow_linear` switches: exact `nn.Linear`, float32 weights on the CPU, and
    no forward of its own set on the instance (accelerate's device hooks set one: kept)."""
    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
            and "forward" not in m.__dict__]


@contextmanager
def narrow_linear(model: torch.nn.Module, modules: list[torch.nn.Linear] | None = None) -> Iterator[None]:
    """Inside the block, the model's plain float32 CPU `nn.Linear` layers compute W @ X^T
    (see the module docstring); `modules` (from `narrow_modules`) saves finding them again."""
    layers = narrow_modules(model) if modules is None else modules
    for layer in layers:
        layer.forward = _narrow_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
