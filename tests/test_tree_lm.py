"""TreeLM's KV cache of slots against plain forward passes: every token of a tree fed over
several calls (kept slots, cropped ones, compaction in between) gets the log-probabilities
a plain forward pass of its own path gives. Random-weight float64 models: a Llama and a
Gemma-3 with sliding-window layers (the window shorter than the paths)."""

from __future__ import annotations

import random

import pytest
import torch

from tokensurgery.byte_models.exact.tree_lm import Query, TreeLM


@pytest.fixture(scope="module")
def models():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    small = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    llama = LlamaForCausalLM(LlamaConfig(**small)).double().eval()
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(**small, head_dim=8, sliding_window=5,
                                                layer_types=["sliding_attention", "full_attention"])).double().eval()
    return {"llama": llama, "gemma3_sliding": gemma}


def plain(model, path: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([path])).logits[0, -1].double().log_softmax(-1)


@pytest.mark.parametrize("defer", [False, True], ids=["trunk_first", "trunk_deferred"])
@pytest.mark.parametrize("name", ["llama", "gemma3_sliding"])
def test_slots_kept_cropped_and_compacted_match_plain_forward(models, name, defer):
    model, rng = models[name], random.Random(1)
    lm = TreeLM(model)
    trunk = [rng.randrange(5, 45) for _ in range(4)]
    first = lm.reset(trunk, defer=defer)
    assert (first is None) == defer and lm.calls == (0 if defer else 1)
    paths = {s: trunk[: s + 1] for s in range(len(trunk))}  # slot -> its token path
    checked = 0
    for step in range(6):
        slots = list(paths)
        tokens, parents, anchor, new_paths = [], [], [], []
        for i in range(rng.randrange(1, 13)):  # 7-15 rows are padded to 16 on CPU (TreeLM._run)
            tok = rng.randrange(5, 45)
            if i and rng.random() < 0.5:
                p = rng.randrange(i)
                tokens.append(tok), parents.append(p), anchor.append(-1)
                new_paths.append(new_paths[p] + [tok])
            else:
                a = rng.choice(slots)
                tokens.append(tok), parents.append(-1), anchor.append(a)
                new_paths.append(paths[a] + [tok])
        keep = len(tokens) if step % 2 == 0 else 0  # keep every token, or crop them all
        base = len(lm) + (len(trunk) if defer and step == 0 else 0)  # a deferred trunk's slots come first
        out = lm.forward(Query(tokens, parents, anchor, keep=-1 if keep else 0))
        assert out.shape == (len(tokens), model.config.vocab_size)
        if step == 0:  # the trunk was fed by now, in this very call when deferred
            assert lm.calls == 1 + (not defer)
            after = first if not defer else lm.trunk_logprobs
            assert torch.allclose(after, plain(model, trunk), atol=1e-10)
        for i, path in enumerate(new_paths):
            assert torch.allclose(out[i], plain(model, path), atol=1e-10), (step, i)
            checked += 1
        if keep:
            paths.update({base + i: p for i, p in enumerate(new_paths)})
        assert len(lm) == len(paths)
        if step == 3:  # drop a random leaf-closed subset: keep each slot's ancestors
            keep_slots = {s for s in paths if rng.random() < 0.5} | set(range(len(trunk)))
            for s in list(keep_slots):
                while lm.slot_parent[s] >= 0:
                    s = lm.slot_parent[s]
                    keep_slots.add(s)
            new = lm.compact(sorted(keep_slots))
            paths = {new[s]: p for s, p in paths.items() if new[s] >= 0}
            assert sorted(paths) == list(range(len(lm)))
            assert all(lm.slot_token[s] == p[-1] for s, p in paths.items())
    assert checked > 10
    assert lm.tokens_fed == len(trunk) + checked


def test_compact_refuses_a_slot_without_its_parent(models):
    lm = TreeLM(models["llama"])
    lm.reset([5, 6, 7])
    with pytest.raises(ValueError, match="parent"):
        lm.compact([0, 2])


@pytest.mark.parametrize("extra", [2, 3])
def test_a_deferred_trunk_goes_in_the_next_call_only_when_both_fit(models, extra):
    model = models["llama"]
    lm = TreeLM(model, max_query=6)
    trunk = [5, 6, 7, 8]
    lm.reset(trunk, defer=True)
    tokens = [9 + i for i in range(extra)]
    out = lm.forward(Query(tokens, [-1] + list(range(extra - 1)), [3] + [-1] * (extra - 1), keep=-1))
    assert lm.calls == (1 if len(trunk) + extra <= 6 else 2)
    assert torch.allclose(lm.trunk_logprobs, plain(model, trunk), atol=1e-10)
    for i in range(extra):
        assert torch.allclose(out[i], plain(model, trunk + tokens[: i + 1]), atol=1e-10)
    assert lm.slot_token == trunk + tokens and lm.slot_parent == [-1, 0, 1, 2, 3, 4, 5][: len(trunk) + extra]
