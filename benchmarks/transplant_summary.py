"""One table from all the transplant_quality.py runs kept in results/transplant_search/
(each JSON records the command that made it). Writes results/transplant_search/summary.md.

Run: python benchmarks/transplant_summary.py
"""

from __future__ import annotations

import json
from pathlib import Path

DIR = Path(__file__).resolve().parent.parent / "results" / "transplant_search"
TEXTS = ["en.txt", "de.txt", "fr.txt", "argparse.py", "overall"]


def main() -> None:
    out = ["# Transplant variants, bits per byte (lower is better)", "",
           "First 4,000 bytes of each text, 256-token windows, stride 128; `solve s` is the time to compute the rows.",
           "Option names are `TransplantOptions` fields; unlisted options had the defaults of the time "
           "(screening 1024 candidates in light round 1, 128 later; ridge 0; no FVT fallback).",
           "`center`, `fvt_prior` and `fvt_if_better` were options that lost here and were removed afterwards; "
           "heavy round 1 shows what unregularised OMP coefficients do to a tied model (rows hundreds of times too long; "
           "the ridge default and the row-norm guard came from it).", ""]
    for pair in ("light", "heavy"):
        out += [f"## {pair} pair", "", "| run | variant | " + " | ".join(TEXTS) + " | solve s | rel. error |",
                "|---" * (len(TEXTS) + 4) + "|"]
        seen_base = False
        for f in sorted(DIR.glob(f"{pair}_*.json")):
            data = json.loads(f.read_text())
            for r in data["rows"]:
                if r["variant"].startswith("base"):
                    if seen_base:
                        continue
                    seen_base = True
                err = f"{r['rel_error']:.3f}" if r.get("rel_error") is not None else ""
                out.append(f"| {f.stem} | {r['variant']} | " + " | ".join(f"{r[t]:.4f}" for t in TEXTS) +
                           f" | {r.get('seconds', '')} | {err} |")
        out.append("")
    out += ["## Commands", ""] + [f"- `{f.stem}`: `{json.loads(f.read_text())['meta']['command']}`" for f in sorted(DIR.glob('*.json'))]
    (DIR / "summary.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
