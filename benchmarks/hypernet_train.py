"""Train the benchmark hypernetwork for SmolLM2-135M on the bundled corpus (held-out starts
excluded), within a wall-clock budget; `benchmarks/hypernet_quality.py` evaluates it.

Run: .venv/bin/python benchmarks/hypernet_train.py --out results/hypernet_smollm2 --minutes 58 --steps 480
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from tokensurgery.hypernets import TrainConfig, bundled_corpus, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/hypernet_smollm2")
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--minutes", type=float, default=58.0)
    ap.add_argument("--steps", type=int, default=480)
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    cfg = TrainConfig(steps=args.steps, warmup_steps=args.warmup_steps, negatives=args.negatives, lr=args.lr,
                      lr_warmup=30, max_minutes=args.minutes, save_every=50, log_every=10)
    start = time.perf_counter()
    result = train(args.base, bundled_corpus(), args.out, cfg, resume=args.resume, force=not args.resume)
    print(json.dumps({"steps_done": result.steps_done, "seconds": round(time.perf_counter() - start, 1),
                      "threads": torch.get_num_threads(), "stopped_early": result.stopped_early}))


if __name__ == "__main__":
    main()
