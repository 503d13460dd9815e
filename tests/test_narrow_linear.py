"""narrow_linear: float32 CPU `nn.Linear` layers run as W @ X^T inside the block give
`linear`'s results (to float32 rounding) for every row count, with and without bias; only
plain float32 CPU layers without a forward of their own are switched, and every layer is
restored after the block, also when it raises. A whole float32 Llama through TreeLM agrees with and without it."""

from __future__ import annotations

import pytest
import torch

from tokensurgery.kernels import narrow_linear as nl
from tokensurgery.kernels.narrow_linear import KERNEL_ROWS, narrow_linear, narrow_mm, narrow_modules


class _Sub(torch.nn.Linear):
    pass


def test_narrow_mm_against_float64_for_every_width_and_length():
    """Every path of the numba kernel (passes of 4, 2 and 1 columns; lengths that are not a
    multiple of the vector width) and the MKL path beyond KERNEL_ROWS."""
    assert nl._kernel() is not None, "numba is a dependency: the kernel must be there"
    torch.manual_seed(0)
    for n_in in (1, 7, 37, 130):
        weight = torch.randn(53, n_in)
        for rows in range(1, KERNEL_ROWS + 6):
            x = torch.randn(rows, n_in)
            want = (x.double() @ weight.double().t()).float()
            with torch.no_grad():
                got = narrow_mm(weight, x)
            assert got.shape == (rows, 53) and got.dtype == torch.float32
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (n_in, rows)
    x = torch.randn(37, 3).t()  # a non-contiguous x (a transposed view) is read by its values
    weight = torch.randn(5, 37)
    with torch.no_grad():
        assert torch.allclose(narrow_mm(weight, x), (x.double() @ weight.double().t()).float(), rtol=1e-5, atol=1e-5)


def test_narrow_mm_keeps_gradients_and_nan():
    weight = torch.randn(6, 10, requires_grad=True)
    x = torch.randn(3, 10)
    narrow_mm(weight, x).sum().backward()  # with a gradient wanted, MKL's product (it has a backward)
    assert torch.allclose(weight.grad, x.sum(0).expand(6, 10))
    w = weight.detach().clone()
    w[2, 4] = float("nan")
    with torch.no_grad():
        out = narrow_mm(w, x)
    assert out[:, 2].isnan().all() and not out[:, [0, 1, 3, 4, 5]].isnan().any()


@pytest.mark.parametrize("bias", [True, False])
@torch.no_grad()
def test_every_row_count_matches_linear(bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias)
    for rows in range(1, 41):
        x = torch.randn(1, rows, 48)
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
        with narrow_linear(layer):
            assert "forward" in layer.__dict__
            got = layer(x)
        assert got.shape == want.shape == (1, rows, 80)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), rows
    x = torch.randn(3, 5, 48)  # more than one leading dimension
    with narrow_linear(layer):
        got = layer(x)
    assert torch.allclose(got, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_only_plain_float32_layers_are_switched_and_all_are_restored():
    hooked = torch.nn.Linear(8, 8)
    own = hooked.forward = lambda x: x  # an instance-level forward, as accelerate's hooks set
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8).double(), _Sub(8, 8), torch.nn.Linear(8, 4), hooked)
    assert narrow_modules(model) == [model[0], model[3]]
    with pytest.raises(RuntimeError, match="inside"):
        with narrow_linear(model):
            assert "forward" in model[0].__dict__ and "forward" in model[3].__dict__
            assert "forward" not in model[1].__dict__ and "forward" not in model[2].__dict__
            raise RuntimeError("inside the block")
    assert all("forward" not in m.__dict__ for m in model[:4])
    assert hooked.__dict__["forward"] is own


def _tiny_llama(**extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **extra)
    return LlamaForCausalLM(config).float().eval()


@pytest.mark.parametrize("extra", [{}, {"head_dim": 32, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}])
def test_float32_llama_through_tree_lm_agrees_with_and_without(extra):
    """TreeLM's calls with the lean Llama call (llama_call.py) and W @ X^T, with W @ X^T only,
    and with the model as loaded: the same log-probabilities, for a tree query over a trunk,
    calls against the grown, cropped and compacted cache, and a deferred trunk fed in front of
    a query."""
    from tokensurgery.byte_models.exact.tree_lm import Query, TreeLM

    model = _tiny_llama(**extra)
    outs = []
    for narrow, lean in ((True, True), (True, False), (False, True)):
        lm = TreeLM(model, narrow=narrow, lean=lean)
        assert lm.narrow is narrow and lm.lean is (narrow and lean)
        lm.reset([1, 5, 9])
        # a small tree: two branches from the trunk's last slot, one of them two deep
        first = lm.forward(Query([11, 12, 13, 14, 15], [-1, 0, -1, 2, 3], [2, -1, 2, -1, -1], keep=3))
        second = lm.forward(Query([16, 17], [-1, 0], [5, -1], keep=-1))  # below the kept slot of token 13
        assert lm.compact([0, 1, 2, 5, 6, 7])[7] == 5  # the branch of tokens 11, 12 dropped
        fourth = lm.forward(Query([18, 19], [-1, 0], [5, -1], keep=-1))  # after 13, 16, 17, with room to grow
        lm.reset([2, 3, 4, 5], defer=True)
        third = lm.forward(Query([6, 7], [-1, -1], [3, 1]))
        outs.append(torch.cat([first, second, fourth, third, lm.trunk_logprobs[None]]))
    assert outs[0].shape == (12, 300)
    assert torch.allclose(outs[0], outs[1], atol=1e-4) and torch.allclose(outs[0], outs[2], atol=1e-4)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_lean_call_only_for_the_llamas_it_handles():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tokensurgery.byte_models.exact.llama_call import LlamaCall
    from tokensurgery.byte_models.exact.tree_lm import TreeLM

    assert LlamaCall.unsupported(_tiny_llama()) is None
    assert "biases" in LlamaCall.unsupported(_tiny_llama(attention_bias=True))
    assert "rope type dynamic" in LlamaCall.unsupported(_tiny_llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert "float32" in LlamaCall.unsupported(_tiny_llama().to(torch.bfloat16))
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()
    assert "not LlamaForCausalLM" in LlamaCall.unsupported(qwen)
    assert not TreeLM(qwen).lean and TreeLM(_tiny_llama()).lean
    with pytest.raises(ValueError, match="biases"):
        LlamaCall(_tiny_llama(attention_bias=True))
