"""How the bundled models' vocabularies map onto each other, both ways (the counts README cites).

For each direction BASE <- DONOR (the transplant pairs: light = SmolLM2's tokenizer onto
Gemma-3, heavy = Gemma-3's onto SmolLM2), `VocabMap.build` says how many DONOR tokens BASE has
by surface bytes, how many are new (text and special), and how many are unused placeholders;
a transplant writes a row for every new and every placeholder token. The same figures as
`tokensurgery inspect BASE DONOR`, written with a run record.

Run: python benchmarks/vocab_overlap.py  -> results/vocab_overlap.{json,md}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.inputs import open_vocabulary
from tokensurgery.vocab_map import VocabMap

PAIRS = {"light": ("gemma3-270m", "smollm2-135m"), "heavy": ("smollm2-135m", "gemma3-270m")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results" / "vocab_overlap")
    args = ap.parse_args()
    rows = []
    for pair, (base, donor) in PAIRS.items():
        s = VocabMap.build(open_vocabulary(base), open_vocabulary(donor)).summary()
        s["pair"] = pair
        s["rows_written"] = s["new"] + s["unused"]
        rows.append(s)
        print(f"{pair}: {s}")
    args.out.with_suffix(".json").write_text(json.dumps({"record": run_record(), "rows": rows}, indent=2) + "\n")
    keys = ["pair", "source", "target", "source_size", "target_size", "shared", "specials_mapped",
            "new_text", "new_special", "unused", "rows_written"]
    lines = [f"Command: `{run_record()['command']}`", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
