"""The OMP kernel on an accelerator: agreement with the CPU result and speed, on random data
shaped like the heavy pair (46k-atom dictionary of width 640, k=64).

1. Agreement: the same float64 problem solved on the device and on the CPU (exact and
   screened paths): share of identical supports, largest coefficient difference.
2. Speed: float32, exact and screened, seconds per 512 targets and the extrapolated time for
   the heavy pair's 215,887 tokens.

Run: python benchmarks/omp_device.py --device cuda [--targets 16384] [--json results/omp_device.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokensurgery.kernels.omp import omp

HEAVY_TOKENS = 215_887


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--atoms", type=int, default=46_253)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--targets", type=int, default=16_384)
    ap.add_argument("--check-targets", type=int, default=256)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)
    print(f"command: {command}", flush=True)
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(args.atoms, args.dim, generator=g, dtype=torch.float64), dim=1)
    D = D + 0.3 * torch.randn(1, args.dim, generator=g, dtype=torch.float64)  # a shared direction, like embeddings
    X = torch.randn(args.targets, args.dim, generator=g, dtype=torch.float64)
    out = {"command": command, "device": args.device, "name": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
           "torch": torch.__version__, "agreement": {}, "speed": {}}
    Xc = X[: args.check_targets]
    for label, cand in (("exact", None), ("screened_128", 128)):
        cpu = omp(D, Xc, args.k, dtype=torch.float64, candidates=cand)
        dev = omp(D.to(args.device), Xc.to(args.device), args.k, dtype=torch.float64, candidates=cand)
        same = (cpu.indices == dev.indices.cpu()).all(1).float().mean().item()
        diff = (cpu.coefs - dev.coefs.cpu()).abs().max().item()
        out["agreement"][label] = {"identical_supports": same, "max_coef_diff": diff}
        print(f"agreement {label}: identical supports {same:.1%}, max |coef diff| {diff:.2e}", flush=True)
    Dd, Xd = D.float().to(args.device), X.float().to(args.device)
    for label, cand, n in (("exact", None, min(args.targets, 4096)), ("screened_128", 128, args.targets),
                           ("screened_512", 512, args.targets)):
        omp(Dd, Xd[:512], args.k, candidates=cand)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        omp(Dd, Xd[:n], args.k, candidates=cand, block_size=4096)
        sync(args.device)
        dt = time.perf_counter() - start
        out["speed"][label] = {"targets": n, "seconds": dt, "s_per_512": dt / n * 512, "heavy_pair_s": dt / n * HEAVY_TOKENS}
        print(f"speed {label}: {dt / n * 512:.3f} s per 512 targets -> heavy pair {dt / n * HEAVY_TOKENS:.0f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
