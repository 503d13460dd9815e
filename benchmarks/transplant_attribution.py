"""Where a transplant loses its bits: the extra bits per byte over the base, charged to the
class of the transplanted model's token that covers each byte.

Both models score the same bytes (same windows, each model's own BOS rule). A token's loss
(bits) is spread evenly over the bytes it covers, so each byte gets one loss under BASE
(BASE's tokens) and one under the transplant (DONOR's tokens). A byte's extra bits
(transplant minus base) are charged to the class of the donor token covering it:
- `shared`: the token is in BASE's vocabulary too (its row is copied);
- `special`: a special token inside the text;
- new tokens (rows filled by the method), by what they cover in this text:
  `utf8-fragment` (not whole characters), `whitespace` (only whitespace), `digits` (has a
  digit), `new-word` (optional leading space, letters only, not followed by a letter),
  `new-word-piece` (letters only, inside a longer word), `new-other` (punctuation, mixed).
Bytes that either model leaves unscored (the first token without a BOS) are left out of both.

Writes results/attribution_<pair>.{json,md}.

Run: .venv/bin/python benchmarks/transplant_attribution.py --pair light [--variants "omp;fvt"]
     [--langs multilingual,en,py] [--max-bytes 4000]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import regex
import torch

from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.assets import text_paths
from tokensurgery.evaluate import load_causal_lm, load_model, read_text_file, token_bits
from tokensurgery.transplant import new_embeddings
from tokensurgery.vocabulary import Vocabulary
from transplant_quality import PAIRS, load_pair, parse_variant, swap_embeddings

CLASSES = ["shared", "special", "utf8-fragment", "whitespace", "digits", "new-word", "new-word-piece", "new-other"]
LETTERS = regex.compile(r"^ ?\p{L}[\p{L}\p{M}]*$")


def byte_bits(model, vocab: Vocabulary, text: str, name: str) -> tuple[torch.Tensor, list[int], list[int]]:
    """Per-byte bits of `text` (NaN where unscored), the ids, and each id's first byte."""
    ids = vocab.encode(text)
    data = text.encode()
    bits = token_bits(model, vocab, ids, name=name, progress=False)
    per_byte = torch.full((len(data),), float("nan"), dtype=torch.float64)
    starts, pos = [], 0
    for i, t in enumerate(ids):
        n = len(vocab.surface[t])
        starts.append(pos)
        per_byte[pos : pos + n] = bits[i] / max(n, 1)
        pos += n
    if pos != len(data) or vocab.decode_bytes(ids) != data:
        raise SystemExit(f"{vocab.name}: the tokens of {name} do not cover its bytes exactly ({pos} vs {len(data)})")
    return per_byte, ids, starts


def classify(vocab: Vocabulary, shared: set[int], ids: list[int], starts: list[int], data: bytes) -> list[str]:
    """The class (CLASSES) of each token occurrence, by the bytes it covers in this text."""
    specials = set(vocab.special_ids)
    out = []
    for i, t in enumerate(ids):
        piece = data[starts[i] : starts[i] + len(vocab.surface[t])]
        if t in specials:
            out.append("special")
        elif t in shared:
            out.append("shared")
        else:
            try:
                s = piece.decode("utf-8")
            except UnicodeDecodeError:
                out.append("utf8-fragment")
                continue
            after = data[starts[i] + len(piece) : starts[i] + len(piece) + 4].decode("utf-8", "ignore")[:1]
            if s.isspace():
                out.append("whitespace")
            elif any(c.isdigit() for c in s):
                out.append("digits")
            elif LETTERS.match(s):
                before = data[max(0, starts[i] - 4) : starts[i]].decode("utf-8", "ignore")[-1:]
                inside = (not s.startswith(" ") and before.isalpha()) or after.isalpha()
                out.append("new-word-piece" if inside else "new-word")
            else:
                out.append("new-other")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=list(PAIRS), default="light")
    ap.add_argument("--variants", default="omp;fvt", help="`;`-separated variants (as in transplant_quality.py)")
    ap.add_argument("--langs", default="multilingual,en,py")
    ap.add_argument("--max-bytes", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    print(f"command: {record['command']}", flush=True)
    files = [p for lang in args.langs.split(",") for p in text_paths(lang)]
    texts = {p.name: read_text_file(p, args.max_bytes) for p in files}
    pair = load_pair(args.pair)
    base, donor, base_dir, vm = pair.base, pair.donor, pair.base_dir, pair.vm
    base_emb, donor_emb, donor_tok = pair.base_emb, pair.donor_emb, pair.donor_tok

    model, base_tok = load_causal_lm(base_dir)
    base_bytes = {n: byte_bits(model, base_tok, t, n)[0] for n, t in texts.items()}
    del model
    shared = set(vm.shared)
    table = {}  # variant -> text -> class -> [bytes, base bits, transplant bits]
    solutions = {}  # variants that differ only in how rows are filled share one solve
    for spec in args.variants.split(";"):
        new = new_embeddings(base_emb, donor_emb, vm, parse_variant(spec), solutions=solutions)
        model = load_model(base_dir)
        swap_embeddings(model, new.embeddings)
        table[spec] = {}
        for name, text in texts.items():
            after, ids, starts = byte_bits(model, donor_tok, text, name)
            before = base_bytes[name]
            data = text.encode()
            cls = classify(donor_tok, shared, ids, starts, data)
            acc = defaultdict(lambda: [0, 0.0, 0.0])
            for i, t in enumerate(ids):
                lo, hi = starts[i], starts[i] + len(donor_tok.surface[t])
                a, b = after[lo:hi], before[lo:hi]
                ok = ~(a.isnan() | b.isnan())
                acc[cls[i]][0] += int(ok.sum())
                acc[cls[i]][1] += b[ok].sum().item()
                acc[cls[i]][2] += a[ok].sum().item()
            table[spec][name] = dict(acc)
        print(spec, "done", flush=True)
        del model

    lines = [f"Pair `{args.pair}`: base {base}, donor {donor}; {len(vm.shared):,} shared, {len(vm.new_text):,} new text "
             f"tokens; texts {args.langs} (first {args.max_bytes:,} bytes of each, {len(texts)} files).", "",
             "Extra bits per byte of the whole text charged to each class of donor token (transplant minus base; "
             "share of the text's bytes in brackets):", ""]
    for spec, per_text in table.items():
        totals = defaultdict(lambda: [0, 0.0, 0.0])
        for acc in per_text.values():
            for c, v in acc.items():
                totals[c] = [x + y for x, y in zip(totals[c], v)]
        n = sum(v[0] for v in totals.values())
        extra = sum(v[2] - v[1] for v in totals.values())
        base_bpb = sum(v[1] for v in totals.values()) / n
        lines += [f"**{spec}**: base {base_bpb:.4f} -> transplant {base_bpb + extra / n:.4f} bits per byte "
                  f"(+{extra / n:.4f}) over {n:,} bytes", "",
                  "| text | " + " | ".join(CLASSES) + " | total extra bpb |", "|---" * (len(CLASSES) + 2) + "|"]
        for name, acc in [*per_text.items(), ("all", totals)]:
            nb = sum(v[0] for v in acc.values())
            cells = [f"{(acc[c][2] - acc[c][1]) / nb:+.3f} ({acc[c][0] / nb:.0%})" if c in acc else "" for c in CLASSES]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(v[2] - v[1] for v in acc.values()) / nb:+.3f} |")
        lines.append("")
    md = "\n".join(lines)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"attribution_{args.pair}"
    payload = {"meta": {**record, "pair": args.pair, "base": base, "donor": donor, "langs": args.langs,
                        "max_bytes": args.max_bytes, "columns": ["bytes", "base_bits", "transplant_bits"]},
               "table": table}
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    (args.out / f"{stem}.md").write_text(f"Command: `{record['command']}` (commit {record['commit']})\n\n{md}\n")


if __name__ == "__main__":
    main()
