"""tokensurgery transplant vs mergekit-tokensurgeon 0.1.5, side by side on one machine.

Both tools run as command-line programs on the same imported checkpoints with k=64 and OMP.
mergekit is installed from PyPI into its own virtual environment (.bench/mergekit-venv; torch
2.13.0 CPU like ours). For each pair: wall-clock seconds and peak resident memory of each
run, the speed ratio, and bits per byte of each output (and of the base with its own
tokenizer) on held-out text in English, German, French and Python code.

A full mergekit run on the heavy pair takes hours here; with `--mergekit-limit-s S` it is
stopped after S seconds and its total is extrapolated from its own progress bar (marked as
such in the results), and its output is not scored.

Writes results/<name>.{json,md} (default name: vs_mergekit).

Run: .venv/bin/python benchmarks/vs_mergekit.py [--pairs light,heavy] [--mergekit-limit-s 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path


from run_record import run_record  # this script's folder is on sys.path
from tokensurgery.assets import text_paths
from tokensurgery.inputs import open_model
from tokensurgery.evaluate import load_causal_lm, score_files
from transplant_quality import PAIRS  # the same two pairs (this script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
MERGEKIT = "mergekit==0.1.5"


def mergekit_venv(root: Path) -> Path:
    """A virtual environment with mergekit (created once)."""
    venv = root / "mergekit-venv"
    exe = venv / "bin" / "mergekit-tokensurgeon"
    if not exe.exists():
        print(f"installing {MERGEKIT} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + [MERGEKIT], check=True)
    return exe


def timed(cmd: list[str], log: Path, limit_s: float | None = None, env=None) -> dict:
    """Run `cmd` under /usr/bin/time; wall seconds, peak RSS (GiB), whether it was cut short."""
    wrapped = ["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd] if Path("/usr/bin/time").exists() else cmd
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(wrapped, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=limit_s)
            cut = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            cut = True
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    rss = re.findall(r"MAXRSS_KB=(\d+)", text)
    if proc.returncode != 0 and not cut:
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")
    return {"seconds": seconds, "peak_rss_gib": int(rss[-1]) / 2**20 if rss else None, "cut_short": cut}


def mergekit_progress(log: Path) -> tuple[int, int, float] | None:
    """(done, total, seconds per batch) from the last 'Approximating tokens' tqdm update."""
    text = log.read_text(errors="replace")
    hits = re.findall(r"Approximating tokens:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^,\]]*,\s*([\d.]+)(s/it|it/s)", text)
    if not hits:
        return None
    done, total, rate, unit = hits[-1]
    per = float(rate) if unit == "s/it" else 1 / float(rate)
    return int(done), int(total), per


def score(folder: Path, files: list[Path], max_bytes: int, tokenizer_from: Path | None = None) -> dict:
    """Bits per byte of the model in `folder` (with the tokenizer of `tokenizer_from` if given)."""
    from tokensurgery.inputs import vocabulary_of_folder

    model, vocab = load_causal_lm(folder)
    if tokenizer_from is not None:
        vocab = vocabulary_of_folder(Path(tokenizer_from))
    scores = score_files(model, vocab, files, max_bytes=max_bytes)
    return {s.name: s.bits_per_byte for s in scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="light,heavy")
    ap.add_argument("--langs", default="en,de,fr,py")
    ap.add_argument("--max-bytes", type=int, default=6000)
    ap.add_argument("--mergekit-limit-s", type=float, default=None,
                    help="stop mergekit after this many seconds (heavy pair) and extrapolate its total")
    ap.add_argument("--ours", default="", help="extra options for `tokensurgery transplant`, e.g. '--candidates 256'")
    ap.add_argument("--ours-fvt", action="store_true", help="also run `tokensurgery transplant --method fvt`")
    ap.add_argument("--mergekit-subword", action="store_true",
                    help="also run mergekit's `-a subword` (its FVT) and score it (light pair: it is fast)")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--name", default="vs_mergekit", help="stem of the result files")
    ap.add_argument("--no-as-written", action="store_true",
                    help="score mergekit's outputs only with tokensurgery's tokenizer (BOS added where BASE needs it: "
                         "the equal-footing comparison), not also with the tokenizer mergekit wrote")
    args = ap.parse_args()
    record = run_record()
    command = record["command"]
    print(f"command: {command}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    exe = mergekit_venv(args.work)
    files = [p for lang in args.langs.split(",") for p in text_paths(lang)]
    ours_exe = str(Path(sys.executable).with_name("tokensurgery"))
    results = {}
    for pair in args.pairs.split(","):
        base_alias, donor_alias = PAIRS[pair]
        base, donor = open_model(base_alias), open_model(donor_alias)
        ours_out, mk_out = args.work / f"{pair}-tokensurgery", args.work / f"{pair}-mergekit"
        r = {"base": base_alias, "donor": donor_alias}
        print(f"[{pair}] tokensurgery transplant ...", flush=True)
        r["tokensurgery"] = timed([ours_exe, "transplant", str(base), str(donor), str(ours_out), "--force",
                                   *args.ours.split()], args.work / f"{pair}-tokensurgery.log")
        print(f"[{pair}] tokensurgery: {r['tokensurgery']}", flush=True)
        shutil.rmtree(mk_out, ignore_errors=True)
        print(f"[{pair}] mergekit-tokensurgeon ...", flush=True)
        mk_log = args.work / f"{pair}-mergekit.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        mk = timed([str(exe), str(base), str(donor), str(mk_out), "-k", "64"], mk_log,
                   limit_s=args.mergekit_limit_s if pair == "heavy" else None, env=env)
        progress = mergekit_progress(mk_log)
        if mk["cut_short"]:
            if progress is None or progress[0] == 0:
                raise SystemExit(f"mergekit made no measurable progress in {args.mergekit_limit_s}s; see {mk_log}")
            done, total, per = progress
            mk["extrapolated_seconds"] = mk["seconds"] + (total - done) * per
            mk["batches_done"], mk["batches_total"], mk["seconds_per_512"] = done, total, per
        elif progress:
            mk["seconds_per_512"] = progress[2]
        r["mergekit"] = mk
        mk_total = mk.get("extrapolated_seconds", mk["seconds"])
        r["speedup"] = mk_total / r["tokensurgery"]["seconds"]
        print(f"[{pair}] mergekit: {mk}; speed-up {r['speedup']:.1f}x", flush=True)
        r["bpb"] = {"base (own tokenizer)": score(base, files, args.max_bytes),
                    "tokensurgery omp": score(ours_out, files, args.max_bytes)}
        if not mk["cut_short"]:
            if not args.no_as_written:
                r["bpb"]["mergekit omp"] = score(mk_out, files, args.max_bytes)
            # mergekit's rows with tokensurgery's tokenizer (BOS configured where BASE needs it):
            # separates the embedding method from the tokenizer set-up
            r["bpb"]["mergekit omp, tokensurgery's tokenizer"] = score(mk_out, files, args.max_bytes, tokenizer_from=ours_out)
        if args.ours_fvt:
            fvt_out = args.work / f"{pair}-tokensurgery-fvt"
            r["tokensurgery fvt"] = timed([ours_exe, "transplant", str(base), str(donor), str(fvt_out), "--force",
                                           "--method", "fvt"], args.work / f"{pair}-tokensurgery-fvt.log")
            r["bpb"]["tokensurgery fvt"] = score(fvt_out, files, args.max_bytes)
        if args.mergekit_subword:
            sub_out = args.work / f"{pair}-mergekit-subword"
            shutil.rmtree(sub_out, ignore_errors=True)
            r["mergekit subword"] = timed([str(exe), str(base), str(donor), str(sub_out), "-a", "subword"],
                                          args.work / f"{pair}-mergekit-subword.log", env=env)
            if not args.no_as_written:
                r["bpb"]["mergekit subword (FVT)"] = score(sub_out, files, args.max_bytes)
            r["bpb"]["mergekit subword, tokensurgery's tokenizer"] = score(sub_out, files, args.max_bytes,
                                                                           tokenizer_from=ours_out)
        results[pair] = r
        print(json.dumps(r, indent=1), flush=True)
    lines = []
    for pair, r in results.items():
        mk = r["mergekit"]
        mk_time = (f"{mk['extrapolated_seconds']:.0f} (extrapolated from {mk['batches_done']}/{mk['batches_total']} "
                   f"batches at {mk['seconds_per_512']:.1f} s per 512 tokens)" if mk["cut_short"] else f"{mk['seconds']:.0f}")
        lines += [f"### {pair} pair: base {r['base']}, donor {r['donor']}", "",
                  "| tool | wall seconds | peak RSS GiB |", "|---|---|---|",
                  f"| tokensurgery | {r['tokensurgery']['seconds']:.0f} | {r['tokensurgery']['peak_rss_gib'] or 0:.1f} |",
                  f"| mergekit-tokensurgeon | {mk_time} | "
                  f"{'n/a (stopped)' if mk['peak_rss_gib'] is None else format(mk['peak_rss_gib'], '.1f')} |",
                  *[f"| {tool} | {r[tool]['seconds']:.0f} | {r[tool]['peak_rss_gib'] or 0:.1f} |"
                    for tool in ("tokensurgery fvt", "mergekit subword") if tool in r], "",
                  f"Speed-up: **{r['speedup']:.1f}x**", ""]
        names = list(next(iter(r["bpb"].values())))
        lines += ["| bits per byte | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |" for k, v in r["bpb"].items()]
        lines.append("")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**record, "max_bytes": args.max_bytes, "langs": args.langs, "ours": args.ours,
            "as_written_scored": not args.no_as_written}
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(f"Command: `{command}` (commit {record['commit']})\n\n{table}\n")


if __name__ == "__main__":
    main()
