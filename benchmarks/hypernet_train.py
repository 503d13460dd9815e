"""Train the benchmark hypernetwork for SmolLM2-135M on the bundled corpus (held-out starts
excluded), within a wall-clock budget; `benchmarks/hypernet_quality.py` evaluates it. The
final weights are cast to bfloat16 (about 19 MB, committed, so the published figures can be
re-run without training; `--no-bf16` keeps float32). Training resumes from the float32
checkpoint, not from the cast file.

Run: .venv/bin/python benchmarks/hypernet_train.py --out results/hypernet_smollm2 --minutes 75 --steps 480
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
    ap.add_argument("--no-bf16", action="store_true", help="keep the final weights in float32")
    args = ap.parse_args()
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    cfg = TrainConfig(steps=args.steps, warmup_steps=args.warmup_steps, negatives=args.negatives, lr=args.lr,
                      lr_warmup=30, max_minutes=args.minutes, save_every=50, log_every=10)
    start = time.perf_counter()
    result = train(args.base, bundled_corpus(), args.out, cfg, resume=args.resume, force=not args.resume)
    if not args.no_bf16:
        cast_bf16(Path(args.out))
    print(json.dumps({"steps_done": result.steps_done, "seconds": round(time.perf_counter() - start, 1),
                      "threads": torch.get_num_threads(), "stopped_early": result.stopped_early}))


def cast_bf16(folder: Path) -> None:
    """Save the trained hypernetwork again in bfloat16, through its own saver (loading casts it back)."""
    from tokensurgery.hypernets import Hypernet

    Hypernet.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)


if __name__ == "__main__":
    main()
