"""Greedy generation after a merged prompt: does merging the prompt change what the model writes?

Prompts: pieces of held-out text (en/de/py: the first --max-bytes of each file; multilingual:
the test halves of the 13 script groups, pooled in file order as in dynamic.py), cut at whitespace into
--chunk-bytes pieces, in batches of --batch-size. For --decode-per-batch prompts of each batch
(evenly spaced in it), greedy continuations of --max-new-bytes bytes with a KV cache over BASE's
vocabulary (`generate_many`): `plain` (the prompt in BASE's tokens), then per --settings the
whole batch merged together (new tokens' rows from --hypernet, or FVT), with `tail=N` each
prompt's last N segments kept in BASE's tokens. Every continuation starts after the same start token and is decoded the same way; only
the prefill differs.

Reported per set and setting: prompt tokens saved (over the prompts continued); agreement with plain greedy decoding (the
common prefix of the two continuations in bytes / bytes generated, and the share of prompts
whose whole continuation is unchanged); the plain model's bits per byte of the continuation
generated (prompt as context in its own tokens: how likely the plain model finds what was
written); seconds of merging + rows, of prefill + decoding.

Run: .venv/bin/python benchmarks/dynamic_prompt.py [--hypernet DIR] [--settings "reduction=0.12,boundary=word;..."]
Writes results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.assets import text_paths
from tokensurgery.evaluate import load_causal_lm, read_text_file
from tokensurgery.hypernets.dynamic import BatchMerger, DynamicModel, chunk_text
from tokensurgery.hypernets.dynamic.generate import generate_many
from tokensurgery.inputs import open_model

from dynamic import parse_setting  # noqa: E402  (this script's folder)
from dynamic_generate import bits_under_plain, common_prefix  # noqa: E402


def prompt_sets(langs: list[str], max_bytes: int, chunk_bytes: int) -> dict[str, list[str]]:
    sets = {}
    for lang in langs:
        pieces = []
        for path in text_paths(lang):
            pieces += chunk_text(read_text_file(path, None if lang.startswith("multilingual") else max_bytes), chunk_bytes)
        sets[lang] = pieces
    return sets


def scored(model, vocab, prompt: str, generated: bytes) -> dict:
    bits, n = bits_under_plain(model, vocab, prompt, generated)
    return {"bits": bits, "scored_bytes": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hypernet", default=None, help="hypernetwork folder for the new rows (default: FVT)")
    ap.add_argument("--langs", default="en,de,py,multilingual")
    ap.add_argument("--settings", default="reduction=0.12,boundary=word;reduction=0.12,boundary=word,tail=4")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-bytes", type=int, default=512)
    ap.add_argument("--max-bytes", type=int, default=16384, help="bytes of each en/de/py file")
    ap.add_argument("--decode-per-batch", type=int, default=4, help="prompts of each batch continued")
    ap.add_argument("--max-new-bytes", type=int, default=32)
    ap.add_argument("--name", default="dynamic_prompt")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    print(f"command: {record['command']}", flush=True)
    model, vocab = load_causal_lm(open_model(args.model, progress=False))
    dm = DynamicModel(model, hypernet=args.hypernet)
    sets = prompt_sets(args.langs.split(","), args.max_bytes, args.chunk_bytes)
    specs = [s for s in args.settings.split(";") if s]
    results = {"record": record, "options": vars(args) | {"out": str(args.out)}, "sets": {}}
    for name, prompts in sets.items():
        rows = {"plain": [], **{s: [] for s in specs}}
        for i in range(0, len(prompts), args.batch_size):
            batch = prompts[i : i + args.batch_size]
            k = min(args.decode_per_batch, len(batch))
            picked = sorted({round(j * (len(batch) - 1) / max(k - 1, 1)) for j in range(k)})
            asked = [batch[j] for j in picked]
            plain = generate_many(dm, vocab, batch, args.max_new_bytes, decode=picked)
            rows["plain"] += [{"prompt_tokens": g.prompt_tokens, "read": g.prompt_tokens_read, "seconds": g.seconds,
                               "merge_seconds": 0.0, "agree_bytes": len(g.text), "bytes": len(g.text),
                               **scored(model, vocab, p, g.text)} for p, g in zip(asked, plain)]
            for spec in specs:
                s = parse_setting(spec)
                merger = BatchMerger(vocab, boundary=s["boundary"], n_base=dm.n_base, whole_chars=s["whole_chars"])
                got = generate_many(dm, vocab, batch, args.max_new_bytes, merger=merger, merges=s["merges"],
                                    reduction=s["reduction"], tail=s["tail"], decode=picked)
                rows[spec] += [{"prompt_tokens": g.prompt_tokens, "read": g.prompt_tokens_read, "seconds": g.seconds,
                                "merge_seconds": g.merge_seconds / len(batch),
                                "agree_bytes": common_prefix(g.text, ref.text), "bytes": len(g.text),
                                **scored(model, vocab, p, g.text)} for p, g, ref in zip(asked, got, plain)]
        summary = {}
        for spec, rs in rows.items():
            summary[spec] = {
                "prompts": len(rs),
                "prompt_reduction": 1 - sum(r["read"] for r in rs) / sum(r["prompt_tokens"] for r in rs),
                "agreement": sum(r["agree_bytes"] for r in rs) / max(sum(r["bytes"] for r in rs), 1),
                "unchanged": sum(r["agree_bytes"] == r["bytes"] for r in rs) / len(rs),
                "plain_bpb": sum(r["bits"] for r in rs) / max(sum(r["scored_bytes"] for r in rs), 1),
                "seconds": sum(r["seconds"] for r in rs), "merge_seconds": sum(r["merge_seconds"] for r in rs)}
            m = summary[spec]
            print(f"{name:13s} {spec:40s} prompts {m['prompt_reduction']:6.1%} fewer; agreement {m['agreement']:6.1%}; "
                  f"unchanged {m['unchanged']:6.1%}; plain bpb of the continuation {m['plain_bpb']:.3f}", flush=True)
        results["sets"][name] = {"summary": summary, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(results, specs))
    print(f"wrote {args.out / args.name}.{{json,md}}")


def markdown(results: dict, specs: list[str]) -> str:
    rec, opt = results["record"], results["options"]
    names = list(results["sets"])
    lines = [f"Command: `{rec['command']}`", "",
             f"Commit {rec['commit']}, {rec['date']}, {rec.get('cpu_model', rec['machine'])}, {rec['cpus']} CPUs, "
             f"torch {rec['torch']}, transformers {rec.get('transformers', '?')}.", "",
             f"Model {opt['model']}; new-token rows: {'hypernetwork ' + opt['hypernet'] if opt['hypernet'] else 'FVT'}; "
             f"prompts: pieces of at most {opt['chunk_bytes']} bytes (en/de/py: the first {opt['max_bytes']} bytes of "
             f"the held-out file; multilingual: the test halves of all groups), merged in batches of {opt['batch_size']}, "
             f"{opt['decode_per_batch']} of each batch continued; greedy continuations of {opt['max_new_bytes']} bytes "
             f"over the model's vocabulary.",
             "", "Per cell: prompt tokens saved; agreement with plain greedy decoding (common prefix / bytes "
             "generated); prompts whose continuation is unchanged; the plain model's bits per byte of what was "
             "written.", "",
             "| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for spec in ["plain"] + specs:
        cells = []
        for n in names:
            m = results["sets"][n]["summary"][spec]
            cells.append(f"{m['prompt_reduction']:.1%} fewer; {m['agreement']:.1%} agree; {m['unchanged']:.0%} "
                         f"unchanged; {m['plain_bpb']:.3f} bpb")
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
