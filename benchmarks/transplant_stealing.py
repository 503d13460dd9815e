"""Which new rows take probability where they are not the next token ("stealing").

A transplanted model with a tied output matrix scores every new row against every context.
A new row whose logit exceeds every copied (shared) row's logit at some position outranks
all of BASE's own tokens there; this script counts those rows per variant and text, and the
probability mass new rows take at positions where they are not the target.

For each variant and text (the first --max-bytes of each, DONOR's tokens, non-overlapping
windows of 256 tokens with the BOS the written tokenizer adds first; without a BOS each
window's first token is context only; float32):
- `stolen`: mean over positions of the probability on new text rows other than the target;
  `stolen_max`: the largest such mass at one position;
- `rows_over_base`: new text rows whose logit is above the largest shared-row logit at one
  position or more where they are not the next token; `worst`: the five with the largest
  margin (nats), with their surfaces.
Not handled: untied models (their output rows are solved in the output space; the same
measure applies but is not reported separately).

Writes results/transplant_stealing_<pair><suffix>.{json,md}.

Run: .venv/bin/python benchmarks/transplant_stealing.py --pair light [--variants "omp:affine=0;omp;fvt"]
     [--langs multilingual-dev] [--max-bytes 1500]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from run_record import run_record  # this script's folder is on sys.path
from transplant_quality import PAIRS, load_pair, parse_variant, swap_embeddings
from tokensurgery.assets import text_paths
from tokensurgery.evaluate import load_model
from tokensurgery.transplant import new_embeddings


@torch.no_grad()
def stealing(model, ids: list[int], bos: int | None, new_ids: torch.Tensor, shared_ids: torch.Tensor) -> dict:
    """`stolen`, `stolen_max` and the per-row largest margin over the best shared row."""
    is_new = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
    is_new[new_ids] = True
    prefix = [bos] if bos is not None else []
    step = 256 - len(prefix)
    total, worst, positions = 0.0, 0.0, 0
    margin = torch.full((len(new_ids),), float("-inf"))
    for s in range(0, len(ids) - 1, step):
        x = torch.tensor([prefix + ids[s : s + step]])
        logits = model(input_ids=x).logits[0, :-1].float()
        target = x[0, 1:]
        p = logits.softmax(-1)
        p[torch.arange(len(target)), target] = 0.0
        taken = p[:, is_new].sum(1)
        total, worst, positions = total + taken.sum().item(), max(worst, taken.max().item()), positions + len(target)
        best_shared = logits[:, shared_ids].max(1).values
        rival = logits[:, new_ids].masked_fill(new_ids[None, :] == target[:, None], float("-inf"))  # not the target
        margin = torch.maximum(margin, (rival - best_shared[:, None]).max(0).values)
    return {"stolen": total / positions, "stolen_max": worst, "positions": positions, "margin": margin}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=list(PAIRS), default="light")
    ap.add_argument("--variants", default="omp:affine=0;omp;fvt", help="`;`-separated, as transplant_quality.py")
    ap.add_argument("--langs", default="multilingual-dev")
    ap.add_argument("--max-bytes", type=int, default=1500)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    print(f"command: {record['command']}", flush=True)
    files = [p for lang in args.langs.split(",") for p in text_paths(lang)]
    p = load_pair(args.pair)
    vm, tok = p.vm, p.donor_tok
    if not p.base_emb.tied:
        raise SystemExit(f"{p.base} is untied; this measure is for tied output matrices")
    new_ids = torch.tensor(sorted(vm.new_text))
    shared_ids = torch.tensor(sorted(vm.shared))
    texts = {f.stem: tok.encode(f.read_bytes()[: args.max_bytes].decode("utf-8", "ignore")) for f in files}
    rows, solutions = [], {}
    for spec in args.variants.split(";"):
        new = new_embeddings(p.base_emb, p.donor_emb, vm, parse_variant(spec), progress=False, solutions=solutions)
        model = load_model(p.base_dir)
        swap_embeddings(model, new.embeddings)
        row = {"variant": spec, "texts": {}}
        for name, ids in texts.items():
            r = stealing(model, ids, tok.bos_added, new_ids, shared_ids)
            over = (r["margin"] > 0).nonzero().squeeze(1)
            top = r["margin"].topk(min(5, len(new_ids)))
            row["texts"][name] = {
                "stolen": round(r["stolen"], 5), "stolen_max": round(r["stolen_max"], 4), "positions": r["positions"],
                "rows_over_base": len(over),
                "worst": [[vm.target.surface[int(new_ids[i])].decode("utf-8", "backslashreplace"), round(float(v), 2)]
                          for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0]}
            print(spec, name, row["texts"][name], flush=True)
        rows.append(row)
        del model
    names = list(texts)
    lines = [f"Pair `{args.pair}`: base {p.base}, donor {p.donor}; {len(new_ids):,} new text rows; first "
             f"{args.max_bytes} bytes per text. Cell: mean probability new rows take where they are not the next "
             "token / rows that outrank every shared row somewhere.", "",
             "| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(f"{r['texts'][n]['stolen']:.4f} / {r['texts'][n]['rows_over_base']}"
                                                     for n in names) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"transplant_stealing_{args.pair}{args.suffix}"
    meta = {**record, "pair": args.pair, "langs": args.langs, "max_bytes": args.max_bytes}
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{stem}.md").write_text(f"Command: `{record['command']}` (commit {record['commit']})\n\n{table}\n")


if __name__ == "__main__":
    main()
