"""The OMP kernel on the heavy pair's real data: Gemma-3-270M's embeddings of shared tokens
(the dictionary, ~46k atoms x 640) and of tokens SmolLM2 lacks (the targets).

Compares the exact path with screening at several candidate counts on the same random
sample of targets, side by side: seconds per 512 targets, share of targets whose support is
identical to the exact one, mean support overlap, and the relative reconstruction error.
Writes results/omp_kernel.{json,md}.

Run: .venv/bin/python benchmarks/omp_kernel.py [--targets 1024] [--k 64] [--candidates 128,256,512]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tokensurgery import VocabMap, open_vocabulary
from tokensurgery.inputs import open_model
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.kernels.omp import omp
from run_record import run_record  # this script's folder is on sys.path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1024)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--candidates", default="128,256,512")
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    command = record["command"]
    print(f"command: {command}")
    base, donor = open_model("smollm2-135m"), open_model("gemma3-270m")
    vm = VocabMap.build(open_vocabulary(base), open_vocabulary(donor))
    E = load_embeddings(donor).input.float()
    shared = torch.tensor(sorted(vm.shared))
    new = torch.tensor(vm.new_text)
    g = torch.Generator().manual_seed(0)
    sample = new[torch.randperm(len(new), generator=g)[: args.targets]]
    D, X = E[shared], E[sample]
    print(f"dictionary {tuple(D.shape)}, targets {tuple(X.shape)}, k={args.k}, threads={torch.get_num_threads()}")
    rows = []
    start = time.perf_counter()
    exact = omp(D, X, args.k, block_size=args.block_size)
    t_exact = time.perf_counter() - start
    rows.append({"candidates": "all (exact)", "s_per_512": t_exact / len(X) * 512, "speedup": 1.0, "same_support": 1.0,
                 "overlap": 1.0, "rel_error": exact.residual_norm.mean().item()})
    ref = [set(r.tolist()) for r in exact.indices]
    for m in [int(c) for c in args.candidates.split(",")]:
        start = time.perf_counter()
        got = omp(D, X, args.k, block_size=args.block_size, candidates=m)
        t = time.perf_counter() - start
        sets = [set(r.tolist()) for r in got.indices]
        rows.append({"candidates": m, "s_per_512": t / len(X) * 512, "speedup": t_exact / t,
                     "same_support": sum(a == b for a, b in zip(sets, ref)) / len(X),
                     "overlap": sum(len(a & b) / len(b) for a, b in zip(sets, ref)) / len(X),
                     "rel_error": got.residual_norm.mean().item()})
    lines = ["| candidates | s / 512 targets | speed-up | identical support | support overlap | mean rel. error |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['candidates']} | {r['s_per_512']:.2f} | {r['speedup']:.1f}x | {r['same_support']:.1%} | "
                     f"{r['overlap']:.1%} | {r['rel_error']:.4f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "dictionary": list(D.shape), "targets": len(X), "k": args.k, "block_size": args.block_size,
            "candidates": args.candidates}
    (args.out / "omp_kernel.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "omp_kernel.md").write_text(f"Command: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
