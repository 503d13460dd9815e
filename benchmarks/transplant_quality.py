"""Bits per byte of every transplant method on the same texts, side by side, without writing
checkpoints: the base model is loaded once and its embeddings swapped per method.

Pairs: `light` = SmolLM2-135M's tokenizer onto Gemma-3-270M (~3k new tokens);
`heavy` = Gemma-3-270M's tokenizer onto SmolLM2-135M (~216k new tokens).
Variants are `method[:option=value,...]` separated by `;`, e.g. `omp`, `omp:candidates=all`,
`omp:ridge=0.01,fvt_above=0.4`, `knn:k=16` (`all`/`none` for None). Writes results/transplant_<pair>.{json,md}.

Run: .venv/bin/python benchmarks/transplant_quality.py --pair light [--variants ...] [--langs en,de,fr,py]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.assets import text_paths
from tokensurgery.inputs import vocabulary_of_folder
from tokensurgery.checkpoint import check_embeddings_cover, load_embeddings
from tokensurgery.evaluate import load_causal_lm, load_model, score_files
from tokensurgery.output_tokenizer import tokenizer_for_output
from tokensurgery.transplant import TransplantOptions, load_donor_embeddings, new_embeddings, prepare

PAIRS = {"light": ("gemma3-270m", "smollm2-135m"), "heavy": ("smollm2-135m", "gemma3-270m")}
DEFAULT_VARIANTS = "omp;omp:candidates=all;omp:normalize=1;omp:ridge=0;omp:fvt_above=none;knn;fvt;mean;zero"


def parse_variant(spec: str) -> TransplantOptions:
    method, _, rest = spec.partition(":")
    opts = TransplantOptions(method=method)
    types = {f.name: f.type for f in dataclasses.fields(TransplantOptions)}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise SystemExit(f"unknown option {key!r} in {spec!r}")
        if value in ("all", "none"):
            setattr(opts, key, None)
        elif types[key] in (bool, "bool"):  # normalize, affine, blend, blend_error
            setattr(opts, key, value not in ("0", "false"))
        elif key in ("k", "candidates", "block_size"):
            setattr(opts, key, int(value))
        elif key in ("ridge", "fvt_above"):
            setattr(opts, key, float(value))
        else:
            setattr(opts, key, value)
    return opts


@dataclasses.dataclass
class Pair:
    """A pair's inputs, opened once: BASE folder, the map, both embeddings, and the donor's
    tokenizer as `transplant` writes it (BOS added where BASE needs one)."""

    base: str
    donor: str
    base_dir: Path
    vm: object
    base_emb: object
    donor_emb: object
    donor_tok: object


def load_pair(pair: str) -> Pair:
    base, donor = PAIRS[pair]
    base_dir, donor_, vm = prepare(base, donor)
    with donor_:  # removes a converted tokenizer's temporary folder (and the BOS-adding copy below)
        base_emb = load_embeddings(base_dir)
        check_embeddings_cover(base_emb, len(vm.source), base)
        donor_emb = load_donor_embeddings(donor_, donor, vm, "omp")
        tok_dir, note = tokenizer_for_output(vm, donor_.files)
        if tok_dir != donor_.files:
            donor_.temporary.append(tok_dir)
        if note:
            print("note:", note)
        return Pair(base, donor, base_dir, vm, base_emb, donor_emb, vocabulary_of_folder(tok_dir))


def swap_embeddings(model, new) -> None:
    """Give a loaded model new embedding matrices (rows = new vocabulary)."""
    n = new.input.shape[0]
    model.resize_token_embeddings(n, mean_resizing=False)
    model.get_input_embeddings().weight.data.copy_(new.input)
    if new.output is not None:
        model.get_output_embeddings().weight.data.copy_(new.output)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=list(PAIRS), default="light")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="`;`-separated variants")
    ap.add_argument("--langs", default="en,de,fr,py")
    ap.add_argument("--max-bytes", type=int, default=6000)
    ap.add_argument("--suffix", default="", help="added to the result files' stem, e.g. _multilingual")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    command = record["command"]
    print(f"command: {command}", flush=True)
    langs = args.langs.split(",")
    files = [p for lang in langs for p in text_paths(lang)]
    p = load_pair(args.pair)
    base, donor, base_dir, vm, base_emb, donor_emb, donor_tok = (p.base, p.donor, p.base_dir, p.vm, p.base_emb,
                                                                 p.donor_emb, p.donor_tok)
    rows = []
    model, tok = load_causal_lm(base_dir)
    scores = score_files(model, tok, files, max_bytes=args.max_bytes)
    rows.append({"variant": f"base ({base}, own tokenizer)", "seconds": 0.0,
                 **{s.name: s.bits_per_byte for s in scores}})
    print(rows[-1], flush=True)
    solutions = {}  # variants that differ only in how rows are filled share one solve
    for spec in args.variants.split(";"):
        opts = parse_variant(spec)
        start = time.perf_counter()
        new = new_embeddings(base_emb, donor_emb, vm, opts, solutions=solutions)
        seconds = time.perf_counter() - start
        model = load_model(base_dir)
        swap_embeddings(model, new.embeddings)
        scores = score_files(model, donor_tok, files, max_bytes=args.max_bytes)
        row = {"variant": spec, "seconds": round(seconds, 1), **{s.name: s.bits_per_byte for s in scores}}
        if new.errors is not None:
            row["rel_error"] = new.errors.mean().item()
        row["fvt_fallbacks"], row["capped"] = new.fvt_fallbacks, new.capped
        if new.blend_weights:
            row["blend_weights"] = new.blend_weights
        if new.blend_lines:
            row["blend_lines"] = new.blend_lines
        rows.append(row)
        print(row, flush=True)
        del model
    names = [p.name for p in files] + ["overall"]
    lines = [f"Pair `{args.pair}`: base {base}, donor {donor}; {len(vm.shared):,} shared, {len(vm.new_text):,} new text "
             f"tokens; first {args.max_bytes} bytes per text.", "",
             "| variant | " + " | ".join(names) + " | solve s | rel. error | FVT rows | capped |", "|---" * (len(names) + 5) + "|"]
    for r in rows:
        err = f"{r['rel_error']:.3f}" if "rel_error" in r else ""
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r[n]:.4f}" for n in names) + f" | {r['seconds']} | {err} | "
                     f"{r.get('fvt_fallbacks', '')} | {r.get('capped', '')} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "pair": args.pair, "base": base, "donor": donor, "langs": langs, "max_bytes": args.max_bytes}
    stem = f"transplant_{args.pair}{args.suffix}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{stem}.md").write_text(f"Command: `{command}` (commit {record['commit']})\n\n{table}\n")


if __name__ == "__main__":
    main()
