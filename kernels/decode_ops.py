"""Small float32 CPU operations of a decoding call, each one numba loop instead of several torch ops.

In a call of a few tokens every torch op costs its dispatch (~5 us on the 2-core CPU) whatever
its size, and Llama's RMSNorm is six of them, its rotary embedding six per tensor; 30 layers of
that were ~2-3 ms of a ~35 ms SmolLM2 call (ad hoc: RMSNorm over 3 x 576 16 us in torch, 4 us
here). Used by `byte_models/exact/llama_call.py`. Both functions take and return torch tensors;
anything but contiguous float32 CPU tensors without a wanted gradient goes through the same
formula in torch (also when numba is missing). Results equal torch's up to float32 rounding
(the sums run in another order).
"""

from __future__ import annotations

import numpy as np
import torch

from .jit import numba_ready


def _build():
    try:
        import numba  # noqa: F401
    except ImportError:
        return None
    from .jit import njit

    fast = {"reassoc", "contract"}

    @njit(fastmath=fast)
    def rms(x, w, eps, out):  # out[t] = w * x[t] / sqrt(mean(x[t]^2) + eps)
        rows, n = x.shape
        for t in range(rows):
            s = np.float32(0.0)
            for i in range(n):
                s += x[t, i] * x[t, i]
            r = np.float32(1.0) / np.sqrt(s / np.float32(n) + np.float32(eps))
            for i in range(n):
                out[t, i] = w[i] * (x[t, i] * r)

    @njit(fastmath=fast)
    def rotate(x, cos, sin, out):  # x, out [T, H, D]; cos, sin [T, D]: x * cos + rotate_half(x) * sin
        rows, heads, d = x.shape
        half = d // 2
        for t in range(rows):
            for h in range(heads):
                for i in range(half):
                    a, b = x[t, h, i], x[t, h, i + half]
                    out[t, h, i] = a * cos[t, i] - b * sin[t, i]
                    out[t, h, i + half] = b * cos[t, i + half] + a * sin[t, i + half]

    return rms, rotate


_KERNELS: list = []


def _kernels():
    if not _KERNELS:
        _KERNELS.append(_build())
    return _KERNELS[0]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm of the rows of x [T, n] (float32 throughout)."""
    kernels = _kernels()
    if kernels is None or x.dim() != 2 or not numba_ready(x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    out = np.empty(x.shape, np.float32)
    kernels[0](x.detach().numpy(), weight.detach().numpy(), eps, out)
    return torch.from_numpy(out)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [T, H, D] with cos, sin [T, D] (transformers'
    `apply_rotary_pos_emb` for one tensor, heads second)."""
    kernels = _kernels()
    if kernels is None or x.dim() != 3 or not numba_ready(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos[:, None] + torch.cat((-x[..., half:], x[..., :half]), -1) * sin[:, None]
    out = np.empty(x.shape, np.float32)
    kernels[1](x.detach().numpy(), cos.detach().numpy(), sin.detach().numpy(), out)
    return torch.from_numpy(out)
