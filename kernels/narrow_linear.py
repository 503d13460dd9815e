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
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _width(rows: int) -> int:
    """Columns to run `rows` rows as: one column would be a matrix-vector product again, and
    column counts other than 2, 4 and multiples of 8 take slower kernels (ad hoc, SmolLM2-135M
    calls of 1-32 tokens: 15 tokens 147 ms, 16 tokens 95 ms)."""
    if rows <= 2:
        return 2
    if rows <= 4:
        return 4
    return -(-rows // 8) * 8


def _narrow_forward(module: torch.nn.Linear):
    weight, bias = module.weight, module.bias

    def forward(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        rows = flat.shape[0]
        width = _width(rows)
        if width > rows:
            flat = torch.cat([flat, flat.new_zeros(width - rows, flat.shape[1])])
        out = torch.mm(weight, flat.t()).t()[:rows]
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
