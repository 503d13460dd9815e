"""Who is right where ByteLM and ByteSampler disagree: brute-force next-byte distributions on
the real SmolLM2-135M (float32) for the prefixes of `results/byte_lm.json`'s side-by-side part.

Also the side-by-side stream steps where the two differed most (the prefix is the stream's
prompt plus the bytes before the step; with `--ours-now` the stream is replayed).

Brute force (tests/brute_force.py) enumerates every token sequence that covers the prefix,
judges each by the tokenizer's own encoding of its whole text (not by either method's
pairwise rule), and sums the model's probabilities from plain forward passes. It is slow on a
49k vocabulary (every token is judged after each sequence that ends at the prefix's end), so
prefixes that end in whitespace (each judgement then tries ~100 next characters) are left
out unless `--include-whitespace`, and each prefix gets `--budget` seconds. Prefixes the two
methods agree on (|Δ log p| < 1e-3) are not checked.

    .venv/bin/python benchmarks/byte_brute_force.py [--side results/byte_lm.json] [--out results/byte_brute_force]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from brute_force import BruteForce, unfinished_character  # noqa: E402  (tests/brute_force.py)
from byte_lm import STREAM_PROMPT  # noqa: E402
from run_record import run_record  # noqa: E402

from tokensurgery.byte_models import ByteLM  # noqa: E402


def conditional(logprobs: np.ndarray) -> np.ndarray:
    """Next-byte probabilities given that the text goes on (bytes renormalised, end dropped)."""
    lp = np.asarray(logprobs, dtype=np.float64)[:256]
    return np.exp(lp - np.logaddexp.reduce(lp))


def distance(p: np.ndarray, q: np.ndarray) -> dict:
    keep = np.maximum(p, q) > 1e-4
    with np.errstate(divide="ignore"):
        dlog = np.abs(np.log(p[keep]) - np.log(q[keep]))
    return {"total_variation": float(0.5 * np.abs(p - q).sum()), "max_abs_dlogp": float(dlog.max()) if keep.any() else 0.0}


def ours_now(blm: ByteLM, entry: dict) -> np.ndarray:
    """ByteLM's distribution after the entry's prefix with this commit's code: a cold call, or
    for a stream step the stream replayed byte by byte from the side-by-side's prompt."""
    prefix = bytes.fromhex(entry["raw"])
    if not entry.get("stream"):
        return blm.next_byte_logprobs(prefix)
    stream = blm.stream(STREAM_PROMPT)
    for b in prefix[len(STREAM_PROMPT):]:
        stream.advance(b)
    return stream.logprobs()


class Timeout(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=Path, default=Path("results/byte_lm.json"))
    ap.add_argument("--out", type=Path, default=Path("results/byte_brute_force"))
    ap.add_argument("--budget", type=float, default=100.0, help="Seconds of brute force per prefix.")
    ap.add_argument("--include-whitespace", action="store_true",
                    help="Also prefixes that end in whitespace (minutes each: every judgement tries ~100 next characters).")
    ap.add_argument("--ours-now", action="store_true",
                    help="Compute ByteLM's distributions with the code at this commit instead of reading them from --side "
                         "(ByteSampler's still come from --side).")
    args = ap.parse_args()
    record = run_record()
    side = next(m["bytesampler"] for m in json.loads(args.side.read_text())["models"] if "bytesampler" in m)
    blm = ByteLM.from_pretrained("smollm2-135m", progress=False)
    brute = BruteForce(blm)
    rows = []

    def alarm(*_):
        raise Timeout

    signal.signal(signal.SIGALRM, alarm)
    # the side-by-side prefixes, then the stream steps where the two differed most (their
    # distributions are stored by byte_lm.py since this script learnt to read them)
    steps = [{**w, "prefix": f"…{w['before']}", "stream": True} for w in side.get("stream_worst_steps", []) if "raw" in w]
    for entry in side["prefixes"] + steps:
        if "ours_logprobs" not in entry:
            continue
        prefix = bytes.fromhex(entry["raw"])
        row = {"prefix": entry["prefix"], **({"stream_step": entry["offset"]} if entry.get("stream") else {})}
        if entry["max_abs_dlogp"] < 1e-3:
            rows.append({**row, "skipped": "the two agree (abs Δ log p < 1e-3)"})
            continue
        if (prefix[-1:].isspace() or prefix.endswith(b"\xc2\xa0")) and not args.include_whitespace:
            rows.append({**row, "skipped": "ends in whitespace (--include-whitespace)"})
            continue
        if unfinished_character(prefix):
            row["note"] = "ends inside a character: brute force finishes it with a sample of characters only (at least one per run of 64 code points)"
        start = time.time()
        signal.setitimer(signal.ITIMER_REAL, args.budget)
        try:
            ref = brute.next_byte(prefix)[:256]
        except Timeout:
            rows.append({**row, "skipped": f"over {args.budget:.0f} s"})
            print(f"{entry['prefix']!r}: over budget", flush=True)
            continue
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        ref = ref / ref.sum()
        ours = ours_now(blm, entry) if args.ours_now else entry["ours_logprobs"]
        row.update(seconds=time.time() - start, ours=distance(conditional(ours), ref),
                   bytesampler=distance(conditional(entry["bytesampler_logprobs"]), ref))
        rows.append(row)
        print(f"{entry['prefix']!r}: ours {row['ours']}, ByteSampler {row['bytesampler']} ({row['seconds']:.0f} s)", flush=True)
    out = {"record": record, "side_from": str(args.side), "ours_now": args.ours_now, "budget_seconds": args.budget, "prefixes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2))
    lines = ["# Brute force where ByteLM and ByteSampler disagree (SmolLM2-135M, float32)", "",
             f"Command: `{record['command']}` at commit {record['commit']}, {record['date']}; "
             + (f"ByteLM's distributions computed in this run, ByteSampler's from `{args.side}`. " if args.ours_now else
                f"distributions of both methods from `{args.side}`. ")
             + "Next byte given that the text goes on; |Δ log p| over entries above 1e-4.", "",
             "| prefix | ours TV | ours max abs Δ log p | ByteSampler TV | ByteSampler max abs Δ log p | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shown = r["prefix"].replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("|", "\\|")
        if "skipped" in r:
            lines.append(f"| `{shown}` | skipped: {r['skipped']} | | | | |")
        else:
            note = f" ({r['note']})" if "note" in r else ""
            if "stream_step" in r:
                note += f" (stream step {r['stream_step']} after `{STREAM_PROMPT.decode()}`)"
            lines.append(f"| `{shown}`{note} | {r['ours']['total_variation']:.1e} | {r['ours']['max_abs_dlogp']:.1e} | "
                         f"{r['bytesampler']['total_variation']:.1e} | {r['bytesampler']['max_abs_dlogp']:.1e} | {r['seconds']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
