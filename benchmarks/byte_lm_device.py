"""Tree attention on a GPU: correctness of TreeLM's packed tree calls, and what a call costs
as the query grows (the reason look-ahead pays off on a GPU but not on a 2-core CPU).

Random-weight models only (no weights need to travel): a Llama and a Gemma-3 (sliding-window
layers) checked against plain forward passes of every branch, then a SmolLM2-135M-shaped
Llama timed with queries of 1..128 tokens over a 512-token trunk.

    python benchmarks/byte_lm_device.py --device cuda --out results/byte_lm_device
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from tokensurgery.byte_models.exact.tree_lm import Query, TreeLM


def random_tree(n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    parents = [-1] + [rng.randrange(-1, i) for i in range(1, n)]
    return [rng.randrange(5, 40) for _ in range(n)], parents


def check(model, device: str, seed: int) -> float:
    """Max |logprob difference| between one tree call and per-branch plain forwards."""
    rng = random.Random(seed)
    lm = TreeLM(model)
    trunk = [rng.randrange(5, 40) for _ in range(12)]
    lm.reset(trunk)
    tokens, parents = random_tree(10, rng)
    anchor = [len(trunk) - 1 if p < 0 else -1 for p in parents]
    out = lm.forward(Query(tokens, parents, anchor, keep=0))
    worst = 0.0
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        ids = torch.tensor([trunk + path[::-1]], device=device)
        with torch.no_grad():
            ref = model(ids).logits[0, -1].double().log_softmax(-1).cpu()
        worst = max(worst, float((out[i] - ref).abs().max()))
    return worst


def main() -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path("results/byte_lm_device"))
    args = ap.parse_args()
    torch.manual_seed(0)
    small = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    llama = LlamaForCausalLM(LlamaConfig(**small)).to(args.device).eval()
    gemma = Gemma3ForCausalLM(Gemma3TextConfig(**small, head_dim=8, sliding_window=6,
                                                layer_types=["sliding_attention", "full_attention"])).to(args.device).eval()
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "torch": torch.__version__, "max_abs_diff": {"llama": check(llama, args.device, 0),
                                                            "gemma3_sliding": check(gemma, args.device, 1)}}
    print(result, flush=True)

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(args.device).eval()
    lm = TreeLM(model)
    lm.reset(list(range(100, 612)))
    timing = {}
    for m in (1, 8, 32, 64, 128):
        tokens, parents = random_tree(m, random.Random(m))
        q = Query(tokens, parents, [len(lm) - 1 if p < 0 else -1 for p in parents], keep=0)
        lm.forward(q)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.time()
        for _ in range(5):
            lm.forward(q)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timing[m] = (time.time() - start) / 5 * 1000
        print(f"query {m:4d} tokens: {timing[m]:.1f} ms per call", flush=True)
    result["ms_per_call_by_query_tokens"] = timing
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = args.out.with_name(args.out.name + "_" + result["device"].split()[-1].lower().replace("/", "_"))
    name.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print("wrote", name.with_suffix(".json"))


if __name__ == "__main__":
    main()
