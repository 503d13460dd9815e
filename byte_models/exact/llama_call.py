"""LlamaCall: one decoding call of a float32 Llama-architecture model on CPU, without
transformers' module tree.

A TreeLM call feeds a few tokens against a KV cache; for a small model on the 2-core CPU, half
of transformers' time per call went to dispatching its modules and small ops (ad hoc,
SmolLM2-135M, 2-4 tokens: 55-73 ms per call with W @ X^T layers, of which ~25-30 ms matrix
products). This is the same computation written as a flat loop over the layers: RMSNorm and
the rotary embedding (one numba loop each, `kernels/decode_ops.py`), attention through
`scaled_dot_product_attention` over the cache (a transformers `DynamicCache`, so cropping and
compaction work as before, but appended to in place: `_append`), the SwiGLU MLP, every
product through `narrow_mm` (the numba kernel for a few rows), and logits only for the rows
asked for: ~27 ms for such a call (ad hoc, streaming).

It reads the model's own parameter tensors at every call (nothing is copied, so later changes
to the weights are seen). `LlamaCall.unsupported(model)` says why a model cannot take this
path (TreeLM then calls the model itself): anything but `LlamaForCausalLM` with float32 CPU
weights, plain `nn.Linear` layers without bias, SiLU, and a rotary embedding whose frequencies
do not change with the length (`rope_type` default, linear, llama3 or yarn). Not handled: other
architectures (Mistral, Qwen2, Gemma keep transformers' path), quantised or hooked layers,
output attentions or hidden states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tokensurgery.kernels.decode_ops import rms_norm, rotate
from tokensurgery.kernels.narrow_linear import narrow_mm, narrow_modules

_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # inv_freq fixed at load


class LlamaCall:
    """`call(ids, mask, pos, cache, rows)` -> float32 logits [len(rows), vocab] after the query
    tokens `rows` (see the module docstring)."""

    @staticmethod
    def unsupported(model) -> str | None:
        """Why `model` cannot run through LlamaCall, or None when it can."""
        if type(model).__name__ != "LlamaForCausalLM":
            return f"{type(model).__name__} is not LlamaForCausalLM"
        config = model.config
        if getattr(config, "hidden_act", "silu") != "silu":
            return f"activation {config.hidden_act}"
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            return "biases in attention or MLP"
        if getattr(config, "pretraining_tp", 1) != 1:
            return "pretraining_tp != 1"
        rope = getattr(model.model.rotary_emb, "rope_type", "default")
        if rope not in _STATIC_ROPE:
            return f"rope type {rope}"
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if len(narrow_modules(model)) != len(linears):
            return "layers that are not plain float32 CPU nn.Linear"
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
            return "parameters not float32 on the CPU"
        return None

    def __init__(self, model):
        why = self.unsupported(model)
        if why is not None:
            raise ValueError(f"LlamaCall cannot run this model: {why}")
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache, rows: list[int]) -> torch.Tensor:
        """`ids` [T] token ids, `mask` [1, 1, T, S + T] additive attention mask over the cache's S
        slots and the query, `pos` [T] position ids, `cache` a transformers DynamicCache (the
        query's keys and values are appended to it), `rows` the query rows to return logits for."""
        inner, T = self.model.model, ids.shape[0]
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        h = inner.embed_tokens.weight[ids]
        cos, sin = (t[0].contiguous() for t in inner.rotary_emb(h, pos[None]))  # the model's own [T, D] tables
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = rms_norm(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            q = rotate(narrow_mm(attn.q_proj.weight, x).view(T, H, D), cos, sin).transpose(0, 1)
            k = rotate(narrow_mm(attn.k_proj.weight, x).view(T, KV, D), cos, sin).transpose(0, 1)
            v = narrow_mm(attn.v_proj.weight, x).view(T, KV, D).transpose(0, 1)
            keys, values = _append(cache, i, k[None], v[None])
            o = F.scaled_dot_product_attention(q[None], keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=H != KV)
            h = h + narrow_mm(attn.o_proj.weight, o[0].transpose(0, 1).reshape(T, H * D))
            x = rms_norm(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            gate = F.silu(narrow_mm(mlp.gate_proj.weight, x))
            h = h + narrow_mm(mlp.down_proj.weight, gate * narrow_mm(mlp.up_proj.weight, x))
        last = rms_norm(h[rows], inner.norm.weight, inner.norm.variance_epsilon)
        return narrow_mm(self.model.lm_head.weight, last)


def _append(cache, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cache.update(k, v, i)` without copying the whole layer: `DynamicLayer.update` concatenates
    (ad hoc, ~3 ms of a ~35 ms SmolLM2 call with a few hundred slots), so the layer's keys and
    values are kept as views into buffers with room to grow (doubling), stored on the layer. A
    layer whose tensors are no longer those views (cropped views still are; TreeLM's compaction
    replaces them) gets new buffers."""
    if i >= len(cache.layers) or not getattr(cache.layers[i], "is_initialized", False):
        return cache.update(k, v, i)
    layer = cache.layers[i]
    n, t = layer.keys.shape[-2], k.shape[-2]
    bufs = getattr(layer, "_tokensurgery_buffers", None)
    if bufs is None or any(now.data_ptr() != b.data_ptr() or now.stride() != b.stride() or b.shape[-2] < n + t
                           for now, b in zip((layer.keys, layer.values), bufs)):
        size = max(64, 2 * (n + t))
        bufs = tuple(now.new_empty(*now.shape[:-2], size, now.shape[-1]) for now in (layer.keys, layer.values))
        for now, b in zip((layer.keys, layer.values), bufs):
            b[..., :n, :] = now
        layer._tokensurgery_buffers = bufs
    bufs[0][..., n : n + t, :] = k
    bufs[1][..., n : n + t, :] = v
    layer.keys, layer.values = bufs[0][..., : n + t, :], bufs[1][..., : n + t, :]
    return layer.keys, layer.values
