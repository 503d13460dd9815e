"""Wall-clock time, per-phase profile and peak memory of `tokensurgery transplant` with its
defaults, run as a user runs it (a fresh process: imports, loading, mapping, solve, writing),
on a quiet machine and beside a CPU-bound process (one busy core).

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
    ap.add_argument("--extra", default="", help="more transplant options, e.g. '--candidates 256'")
    ap.add_argument("--name", default="transplant_speed")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    print(f"command: {record['command']}", flush=True)
    rows = []
    for pair in args.pairs.split(","):
        base, donor = PAIRS[pair]
        for mode in args.modes.split(","):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if mode == "busy" else None
            try:
                run = transplant_once(base, donor, args.extra.split())
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            rows.append({"pair": pair, "mode": mode, **run})
            print(json.dumps(rows[-1]["summary"]["phases"]), f"wall {run['wall_s']} s", flush=True)
    phases = list(dict.fromkeys(p for r in rows for p in r["summary"]["phases"]))
    lines = ["| pair | machine | wall s (whole command) | peak RSS GiB | start-up (imports) | " + " | ".join(phases) + " |",
             "|---" * (len(phases) + 5) + "|"]
    for r in rows:
        ph = r["summary"]["phases"]
        lines.append(f"| {r['pair']} | {r['mode']} | {r['wall_s']} | {r['peak_rss_gib']} | "
                     f"{r['wall_s'] - r['summary']['seconds']:.1f} | "
                     + " | ".join(f"{ph[p]:.1f}" if p in ph else "" for p in phases) + " |")
    for pair in dict.fromkeys(r["pair"] for r in rows):
        walls = {r["mode"]: r["wall_s"] for r in rows if r["pair"] == pair}
        if {"quiet", "busy"} <= set(walls):
            lines.append(f"\n{pair}: busy / quiet = {walls['busy'] / walls['quiet']:.2f}x")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "pairs": args.pairs.split(","), "modes": args.modes.split(","), "extra": args.extra}
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(f"Command: `{record['command']}` (commit {record['commit']}, "
                                              f"{record['cpus']} CPUs)\n\n{table}\n")


if __name__ == "__main__":
    main()
