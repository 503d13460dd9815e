"""decode_ops: the numba RMSNorm and rotary embedding equal transformers' own Llama modules
(to float32 rounding) on the kernel's path, and the torch fallback takes everything else."""

from __future__ import annotations

import torch

from tokensurgery.kernels import decode_ops
from tokensurgery.kernels.decode_ops import rms_norm, rotate


def test_rms_norm_equals_llamas():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert decode_ops._kernels() is not None, "numba is a dependency: the kernels must be there"
    torch.manual_seed(0)
    norm = LlamaRMSNorm(37, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(37))
        for rows in (1, 2, 5):
            x = torch.randn(rows, 37) * 3
            assert torch.allclose(rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-5, atol=1e-6), rows
        x = torch.randn(37, 4).t()  # not contiguous: torch's formula
        assert torch.allclose(rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-5, atol=1e-6)
        x64 = torch.randn(3, 37, dtype=torch.float64)
        assert rms_norm(x64, norm.weight.double(), 1e-5).dtype == torch.float64


def test_rotate_equals_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    T, H, D = 3, 4, 16
    angles = torch.randn(T, D // 2).repeat(1, 2) * 5
    cos, sin = angles.cos(), angles.sin()
    x = torch.randn(T, H, D)
    # transformers: [batch, heads, T, D] with cos/sin [batch, T, D]
    want, _ = apply_rotary_pos_emb(x.transpose(0, 1)[None], x.transpose(0, 1)[None], cos[None], sin[None])
    want = want[0].transpose(0, 1)
    with torch.no_grad():
        assert torch.allclose(rotate(x, cos, sin), want, atol=1e-6)
        assert torch.allclose(rotate(x.transpose(0, 1).contiguous().transpose(0, 1), cos, sin), want, atol=1e-6)  # fallback
    x.requires_grad_(True)
    out = rotate(x, cos, sin)  # with a gradient wanted: torch's formula, differentiable
    assert out.grad_fn is not None and torch.allclose(out, want, atol=1e-6)


def test_kernels_build_without_a_writable_cache(monkeypatch):
    """A read-only install with no writable home: numba finds no place for its cache and
    refuses `cache=True`; the kernels are then compiled without it and still work."""
    import numba.core.caching
    import numpy as np

    from tokensurgery.kernels import narrow_linear

    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "", raising=False)
    wxt = narrow_linear._build_kernel()
    w, x, out = np.ones((3, 5), np.float32), np.arange(10, dtype=np.float32).reshape(2, 5), np.empty((2, 3), np.float32)
    wxt(w, x, out)
    assert np.allclose(out, x.sum(1, keepdims=True).repeat(3, 1))
    rms, _ = decode_ops._build()
    y = np.empty((2, 5), np.float32)
    rms(x, np.ones(5, np.float32), 1e-6, y)
    assert np.allclose(y, x / np.sqrt((x**2).mean(1, keepdims=True) + 1e-6), rtol=1e-5)
