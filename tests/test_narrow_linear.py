"""narrow_linear: float32 CPU `nn.Linear` layers run as W @ X^T inside the block give
`linear`'s results (to float32 rounding) for every row count, with and without bias; only
plain float32 CPU layers without a forward of their own are switched, and every layer is
restored after the block, also when it raises. A whole float32 Llama through TreeLM agrees with and without it."""

from __future__ import annotations

import pytest
import torch

from tokensurgery.kernels.narrow_linear import narrow_linear, narrow_modules


class _Sub(torch.nn.Linear):
    pass


@pytest.mark.parametrize("bias", [True, False])
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


def test_float32_llama_through_tree_lm_agrees_with_and_without():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokensurgery.byte_models.exact.tree_lm import Query, TreeLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).float().eval()
    outs = []
    for narrow in (True, False):
        lm = TreeLM(model, narrow=narrow)
        assert lm.narrow is narrow
        lm.reset([1, 5, 9])
        # a small tree: two branches from the trunk's last slot, one of them two deep
        outs.append(lm.forward(Query([11, 12, 13, 14, 15], [-1, 0, -1, 2, 3], [2, -1, 2, -1, -1], keep=-1)))
    assert outs[0].shape == (5, 300)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    assert all("forward" not in m.__dict__ for m in model.modules())
