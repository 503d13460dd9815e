"""Wall-clock time, per-phase profile and peak memory of `tokensurgery transplant` with its
defaults, run as a user runs it (a fresh process: imports, loading, mapping, solve, writing),
on a quiet machine and beside a CPU-bound process (one busy core).

Modes: `quiet`; `busy` (beside a CPU-bound process); `cold` (quiet, with the parsed-tokenizer
cache, `$TOKENSURGERY_CACHE/vocab`, emptied first: a user's first transplant with these
tokenizers; the imported bundled models stay). `--repeats` runs each mode several times
(`3`, or per pair: `light=3,heavy=1`); the table shows the median run, with the range.

Each run is `python -m tokensurgery.cli transplant BASE DONOR OUT --force --json J`; the
phases come from J, peak RSS from the child's own resource usage (os.wait4). Busy runs start
`python -c "while True: pass"` first and stop it afterwards. Writes
results/transplant_speed.{json,md}.

Run: .venv/bin/python benchmarks/transplant_speed.py --pairs light,heavy [--modes quiet,busy]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.assets import cache_dir
from transplant_quality import PAIRS


def transplant_once(base: str, donor: str, extra: list[str]) -> dict:
    """One transplant in a fresh process: its JSON summary, wall seconds and peak RSS."""
    tmp = Path(tempfile.mkdtemp(prefix="ts-speed-"))
    try:
        cmd = [sys.executable, "-m", "tokensurgery.cli", "transplant", base, donor, str(tmp / "out"), "--force",
               "--json", str(tmp / "summary.json"), *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read()
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"transplant failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
        summary = json.loads((tmp / "summary.json").read_text())
        return {"wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2), "summary": summary}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="light,heavy")
    ap.add_argument("--modes", default="quiet,busy", help="quiet, busy (a CPU-bound process beside it), or both")
    ap.add_argument("--repeats", default="1", help="runs per mode: N, or per pair, e.g. light=3,heavy=1")
    ap.add_argument("--extra", default="", help="more transplant options, e.g. '--candidates 256'")
    ap.add_argument("--name", default="transplant_speed")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    print(f"command: {record['command']}", flush=True)
    repeats = ({p: int(n) for p, n in (item.split("=") for item in args.repeats.split(","))}
               if "=" in args.repeats else {p: int(args.repeats) for p in PAIRS})
    rows = []
    for pair in args.pairs.split(","):
        base, donor = PAIRS[pair]
        for mode in args.modes.split(","):
            runs = []
            for _ in range(repeats.get(pair, 1)):
                if mode == "cold":
                    shutil.rmtree(cache_dir() / "vocab", ignore_errors=True)
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if mode == "busy" else None
                try:
                    runs.append(transplant_once(base, donor, args.extra.split()))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                print(pair, mode, json.dumps(runs[-1]["summary"]["phases"]), f"wall {runs[-1]['wall_s']} s", flush=True)
            median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
            rows.append({"pair": pair, "mode": mode, **median, "walls": [r["wall_s"] for r in runs]})
    phases = list(dict.fromkeys(p for r in rows for p in r["summary"]["phases"]))
    lines = ["| pair | machine | wall s (whole command) | peak RSS GiB | start-up (imports) | " + " | ".join(phases) + " |",
             "|---" * (len(phases) + 5) + "|"]
    for r in rows:
        ph = r["summary"]["phases"]
        spread = f" ({min(r['walls'])}-{max(r['walls'])})" if len(r["walls"]) > 1 else ""
        lines.append(f"| {r['pair']} | {r['mode']} | {r['wall_s']}{spread} | {r['peak_rss_gib']} | "
                     f"{r['wall_s'] - r['summary']['seconds']:.1f} | "
                     + " | ".join(f"{ph[p]:.1f}" if p in ph else "" for p in phases) + " |")
    for pair in dict.fromkeys(r["pair"] for r in rows):
        walls = {r["mode"]: r["wall_s"] for r in rows if r["pair"] == pair}
        if {"quiet", "busy"} <= set(walls):
            lines.append(f"\n{pair}: busy / quiet = {walls['busy'] / walls['quiet']:.2f}x")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "pairs": args.pairs.split(","), "modes": args.modes.split(","), "extra": args.extra,
            "repeats": repeats}
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(f"Command: `{record['command']}` (commit {record['commit']}, "
                                              f"{record['cpus']} CPUs)\n\n{table}\n")


if __name__ == "__main__":
    main()
