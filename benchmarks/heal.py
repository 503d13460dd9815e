"""Healing curves: bits per byte of a transplanted model against CPU-minutes of `heal`, per
loss x what-trains, on held-out text, with BASE (the teacher) and the unhealed transplant on
the same bytes.

The transplant is made once with `transplant`'s defaults (kept in .bench/ between runs). Each
variant then heals it in stages (`--minutes 5,10` = heal to 5 minutes, score, resume to 10,
score); each stage's checkpoint is scored as a user would load it (OUT folder,
`load_causal_lm`). "Gap closed" = (transplant - healed) / (transplant - base), overall.
The learning-rate schedule is held at its peak after warm-up (`steps` is set far beyond what
the minutes allow), so a stage's model is what a longer run would have passed through.
With `--schedule budget` each variant is instead one run of the last `--minutes` value whose
learning rate follows a cosine over that time budget, as `tokensurgery heal --max-minutes M` does.

Run: .venv/bin/python benchmarks/heal.py --pair light --variants "alm:embeddings;lm:embeddings" --minutes 5,10
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from run_record import ROOT, run_record  # this script's folder is on sys.path
from tokensurgery.assets import text_paths
from tokensurgery.corpus import Corpus
from tokensurgery.evaluate import load_causal_lm, score_files
from tokensurgery.heal import HealConfig, Healer, autocast_dtype
from tokensurgery.inputs import open_model
from tokensurgery.transplant import transplant
from transplant_quality import PAIRS


PROMPT = "Die Hauptstadt von Deutschland ist"  # the check: is the continuation German again?


def scores(folder: Path, files: list[Path], max_bytes: int) -> dict:
    """Bits per byte of each file (and overall), and the greedy continuation of PROMPT."""
    import torch

    model, vocab = load_causal_lm(folder)
    out = {s.name: round(s.bits_per_byte, 4) for s in score_files(model, vocab, files, max_bytes=max_bytes,
                                                                   progress=False)}
    ids = ([vocab.bos_added] if vocab.bos_added is not None else []) + vocab.encode(PROMPT)
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=10, do_sample=False, pad_token_id=ids[0])
    out["continuation"] = vocab.decode_bytes(gen[0, len(ids):].tolist()).decode("utf-8", "replace")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=list(PAIRS), default="light")
    ap.add_argument("--variants", default="alm:embeddings;lm:embeddings;alm:new",
                    help="`;`-separated loss:train[:lr] (loss alm|lm|alm+lm, train new|embeddings|lora)")
    ap.add_argument("--minutes", default="5,10", help="cumulative healing minutes at which to score")
    ap.add_argument("--langs", default="en,de,py,multilingual")
    ap.add_argument("--max-bytes", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=HealConfig.lr)
    ap.add_argument("--batch-size", type=int, default=HealConfig.batch_size)
    ap.add_argument("--seq-len", type=int, default=HealConfig.seq_len)
    ap.add_argument("--corpus", default="bundled,multilingual-dev")
    ap.add_argument("--mix", default=HealConfig.mix, choices=["chars", "source"], help="see Corpus.window")
    ap.add_argument("--device", default="cpu", help="cuda on a GPU machine: the same run, one flag")
    ap.add_argument("--autocast", default=HealConfig.autocast, choices=["auto", "bfloat16", "off"],
                    help="bfloat16 products in the training step (auto: where they are fast)")
    ap.add_argument("--schedule", choices=["stages", "budget"], default="stages",
                    help="stages: heal to each --minutes value in turn (resumed), the learning rate held at its peak; "
                         "budget: one run per variant lasting the last --minutes value, the learning rate on a cosine "
                         "over that budget (what `heal --max-minutes M` does), scored at its end")
    ap.add_argument("--suffix", default="", help="added to the result files' stem, e.g. _trains")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "heal")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    record = run_record()
    print("command:", record["command"], flush=True)
    base, donor = PAIRS[args.pair]
    files = [p for lang in args.langs.split(",") for p in text_paths(lang)]
    names = [p.name for p in files] + ["overall"]
    minutes = [float(m) for m in args.minutes.split(",")]
    corpus = Corpus.from_paths(args.corpus.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    student = args.work / f"transplant_{args.pair}"
    if not (student / "config.json").exists():
        start = time.perf_counter()
        transplant(base, donor, student, force=True, progress=False)
        print(f"transplant: {time.perf_counter() - start:.0f}s", flush=True)
    rows = [{"variant": f"base ({base}, own tokenizer)", "minutes": 0, **scores(open_model(base), files, args.max_bytes)},
            {"variant": "transplant (defaults), not healed", "minutes": 0, **scores(student, files, args.max_bytes)}]
    for r in rows:
        print(r, flush=True)

    def write() -> None:
        """The result files as they stand (rewritten after every row, so a stopped run keeps its rows)."""
        lines = [f"Pair `{args.pair}`: {donor}'s tokenizer on {base} (transplant defaults), healed on "
                 f"{args.corpus} ({corpus.n_chars:,} characters, windows drawn by {args.mix}); batch {args.batch_size} x {args.seq_len} tokens; "
                 f"first {args.max_bytes} bytes of each held-out text; bits per byte; training-step products in "
                 f"{autocast_dtype(args.autocast, args.device) or 'float32'} (--autocast {args.autocast}).", "",
                 "| variant | minutes | steps | " + " | ".join(n.removesuffix(".txt") for n in names) + " | gap closed |",
                 "|---" * (len(names) + 4) + "|"]
        for r in rows:
            gap = f"{r['gap_closed']:.1%}" if "gap_closed" in r else ""
            lines.append(f"| {r['variant']} | {r['minutes']:g} | {r.get('steps', '')} | "
                         + " | ".join(f"{r[n]:.3f}" for n in names) + f" | {gap} |")
        lines += ["", f"Greedy continuation of `{PROMPT}`:", ""]
        lines += [f"- {r['variant']}, {r['minutes']:g} min: `{r['continuation'].strip()!r}`" for r in rows]
        table = "\n".join(lines)
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {**record, "pair": args.pair, "base": base, "donor": donor, "langs": args.langs, "max_bytes": args.max_bytes,
                "minutes": minutes, "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len,
                "corpus": args.corpus, "mix": args.mix, "autocast": args.autocast, "schedule": args.schedule,
                "autocast_resolved": str(autocast_dtype(args.autocast, args.device))}
        (args.out / f"heal_{args.pair}{args.suffix}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2,
                                                                    ensure_ascii=False) + "\n")
        (args.out / f"heal_{args.pair}{args.suffix}.md").write_text(f"Command: `{record['command']}` (commit {record['commit']}, "
                                                      f"{record['date']}, load at start {record['load_average_at_start']})"
                                                      f"\n\n{table}\n")

    base_bpb, start_bpb = rows[0]["overall"], rows[1]["overall"]
    write()
    for spec in args.variants.split(";"):
        loss, train, *rest = spec.split(":")
        lr = float(rest[0]) if rest else args.lr
        out = args.work / f"heal_{args.pair}_{loss}_{train}"
        shutil.rmtree(out, ignore_errors=True)
        done = 0.0
        budget = args.schedule == "budget"
        for i, m in enumerate(minutes[-1:] if budget else minutes):
            config = HealConfig(steps=10**6, max_minutes=m - done, lr_by_time=budget, lr=lr, loss=loss, train=train,
                                batch_size=args.batch_size, seq_len=args.seq_len, save_every=10**6, mix=args.mix,
                                device=args.device, autocast=args.autocast)
            healer = Healer(student, corpus, out, config, teacher=base, resume=i > 0,  # lm: only its vocabulary
                            progress=False)
            res = healer.run()
            done = m
            row = {"variant": f"{loss} / {train} / lr {lr:g}" + (", cosine over the budget" if budget else ""),
                   "minutes": m, "steps": res.steps_done,
                   "tokens_per_step": args.batch_size * args.seq_len, **scores(out, files, args.max_bytes),
                   "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
            row["gap_closed"] = round((start_bpb - row["overall"]) / (start_bpb - base_bpb), 4)
            rows.append(row)
            print(row, flush=True)
            write()
            del healer
        shutil.rmtree(out, ignore_errors=True)  # ~0.5-1 GB per healed model
if __name__ == "__main__":
    main()
