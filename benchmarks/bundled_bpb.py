"""Bits per byte of the bundled models with their own tokenizers, on music21's Gutenberg
excerpts (first N bytes of each). Writes results/bundled_bpb.{json,md}.

Run: .venv/bin/python benchmarks/bundled_bpb.py [--max-bytes 8000] [--langs en,de,fr,zh]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tokensurgery.assets import text_paths
from tokensurgery.inputs import open_model
from tokensurgery.evaluate import load_causal_lm, score_files
from run_record import run_record  # this script's folder is on sys.path

MODELS = ["smollm2-135m", "gemma3-270m"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-bytes", type=int, default=8000)
    ap.add_argument("--langs", default="en,de,zh")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    langs = args.langs.split(",")
    record = run_record()
    command = record["command"]
    print(f"command: {command}")
    results = {}
    for alias in MODELS:
        start = time.perf_counter()
        model, tok = load_causal_lm(open_model(alias))
        scores = score_files(model, tok, [p for lang in langs for p in text_paths(lang)], window=args.window, stride=args.stride,
                             max_bytes=args.max_bytes)
        results[alias] = {lang: {"bits_per_byte": s.bits_per_byte, "tokens_per_byte": s.tokens_per_byte, "bytes": s.n_bytes}
                          for lang, s in zip(langs + ["overall"], scores)}
        results[alias]["seconds"] = time.perf_counter() - start
        del model
    header = "| model | " + " | ".join(f"{lang} bpb (tok/B)" for lang in langs) + " |"
    lines = [header, "|" + "---|" * (len(langs) + 1)]
    for alias, r in results.items():
        lines.append(f"| {alias} | " + " | ".join(f"{r[lang]['bits_per_byte']:.3f} ({r[lang]['tokens_per_byte']:.3f})" for lang in langs) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "max_bytes": args.max_bytes, "window": args.window, "stride": args.stride}
    (args.out / "bundled_bpb.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (args.out / "bundled_bpb.md").write_text(f"Command: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
