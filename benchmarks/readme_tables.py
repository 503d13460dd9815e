"""README's measured tables, rendered from the result files only.

Every table of measured figures in README.md that this script knows sits between two markers:

    <!-- results:NAME -->
    | ... the table ... |
    <!-- /results:NAME -->

NAME is one of `TABLES` below; each renderer reads `results/*.json` and nothing else, so a
figure in such a table is exactly what a committed run wrote. `python benchmarks/readme_tables.py`
rewrites the blocks in place; `--check` changes nothing and exits 1 with a diff when README
differs from what the results render (`tests/test_readme_tables.py` runs it).

Not handled: numbers in prose (they cite their result file by hand), and README tables that
have no markers yet.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"readme_tables: {path.relative_to(ROOT)} is missing")
    return json.loads(path.read_text())


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> str:
    return "\n".join([_row(header), "|" + "---|" * len(header), *map(_row, rows)])


def _text_name(key: str) -> str:
    return key[: -len(".txt")] if key.endswith(".txt") else key


def bpb_columns(base: tuple[str, str, str], columns: list[tuple[str, str, str]], seconds: str | None = None) -> str:
    """Bits per byte per text of `transplant_quality.py` result files: `base` and every column
    are (result file, variant, header); the lowest transplant figure of each row is bold.
    `seconds`: the label of a last row with each variant's solve seconds (blend fit included)."""
    def variant(file: str, name: str) -> dict:
        rows = {r["variant"]: r for r in load(file)["rows"]}
        if name not in rows:
            raise SystemExit(f"readme_tables: {file}.json has no variant {name!r} (it has {', '.join(rows)})")
        return rows[name]

    base_row = variant(*base[:2])
    cols = [variant(f, v) for f, v, _ in columns]
    texts = [k for k in base_row if isinstance(base_row[k], float) and k not in ("seconds",)]
    rows = []
    for text in texts:
        values = [c[text] for c in cols]
        best = min(range(len(values)), key=values.__getitem__)
        rows.append([_text_name(text), f"{base_row[text]:.3f}",
                     *[f"**{v:.3f}**" if i == best else f"{v:.3f}" for i, v in enumerate(values)]])
    if seconds:
        rows.append([seconds, "", *[f"{c['seconds']:.1f}" for c in cols]])
    return _table(["text", base[2], *[h for _, _, h in columns]], rows)


def bundled_bpb() -> str:
    res = load("bundled_bpb")["results"]
    langs = [k for k in next(iter(res.values())) if k not in ("overall", "seconds")]
    rows = [[model, *[f"{r[l]['bits_per_byte']:.3f} ({r[l]['tokens_per_byte']:.3f})" for l in langs]]
            for model, r in res.items()]
    return _table(["model", *[f"{l} bpb (tok/B)" for l in langs]], rows)


def transplant_speed() -> str:
    rows, quiet = [], {}
    for r in load("transplant_speed")["rows"]:
        phases = r["summary"]["phases"]
        timed = [phases.get(p, 0.0) for p in ("blend fit", "solve", "fill rows")]
        wall = f"{r['wall_s']:.1f}"
        if len(r.get("walls", [])) > 1:  # the median of several runs, and their range
            wall += f" (runs {min(r['walls']):.1f}-{max(r['walls']):.1f})"
        if r["mode"] == "quiet":
            quiet[r["pair"]] = r["wall_s"]
        elif r["mode"] == "busy" and r["pair"] in quiet:
            wall += f", {r['wall_s'] / quiet[r['pair']]:.2f}x quiet"
        rows.append([r["pair"], r["mode"], wall, f"{r['peak_rss_gib']:.2f}", *[f"{t:.1f}" for t in timed],
                     f"{r['wall_s'] - sum(timed):.1f}"])
    return _table(["pair", "machine", "wall s", "peak RSS GiB", "blend fit s", "solve s", "fill rows s", "rest s"], rows)


def light_multilingual() -> str:
    f = "transplant_light_multilingual"
    return bpb_columns((f, "base (gemma3-270m, own tokenizer)", "Gemma-3-270M, own tokenizer"),
                       [(f, "omp", "**omp (default: blend by error, affine)**"),
                        (f, "omp:blend_error=0", "omp, `--no-blend-error`"), (f, "omp:affine=0", "omp, `--no-affine`"),
                        (f, "omp:blend=0", "omp, `--no-blend`"), (f, "fvt", "fvt")])


def heavy_multilingual() -> str:
    f = "transplant_heavy_multilingual"
    return bpb_columns((f, "base (smollm2-135m, own tokenizer)", "SmolLM2-135M, own tokenizer"),
                       [(f, "omp", "**omp (default: blend by error, affine)**"),
                        (f, "omp:blend_error=0", "omp, `--no-blend-error`"), (f, "omp:affine=0", "omp, `--no-affine`"),
                        (f, "fvt", "fvt")])


def light_candidates_dev() -> str:
    f = "transplant_light_candidates_dev"
    return bpb_columns((f, "base (gemma3-270m, own tokenizer)", "Gemma-3-270M, own tokenizer"),
                       [(f, "omp", "**omp (default: 1,024 candidates)**"), (f, "omp:candidates=512", "512 candidates"),
                        (f, "omp:candidates=256", "256 candidates")], seconds="blend fit + solve s (shared cores)")


def _vs_mergekit(name: str, pair: str) -> str:
    """Bits per byte per text of each tool's output (`vs_mergekit.py`), best transplant bold,
    then wall seconds and peak memory of each run."""
    r = load(name)["results"][pair]
    bpb = r["bpb"]
    base_key = next(k for k in bpb if k.startswith("base"))
    tools = [k for k in bpb if k != base_key]
    texts = list(bpb[base_key])
    rows = []
    for text in texts:
        values = [bpb[t][text] for t in tools]
        best = min(range(len(values)), key=values.__getitem__)
        rows.append([_text_name(text), f"{bpb[base_key][text]:.3f}",
                     *[f"**{v:.3f}**" if i == best else f"{v:.3f}" for i, v in enumerate(values)]])
    labels = {"mergekit omp": "mergekit omp (as written)", "mergekit subword (FVT)": "mergekit subword (FVT, as written)"}
    quality = _table(["text", f"{r['base']}, own tokenizer", *[labels.get(t, t) for t in tools]], rows)
    runs = [("tokensurgery omp (default)", r["tokensurgery"]), ("mergekit-tokensurgeon omp", r["mergekit"]),
            *[(label, r[key]) for key, label in (("tokensurgery fvt", "tokensurgery fvt"),
                                                  ("mergekit subword", "mergekit-tokensurgeon subword (FVT)")) if key in r]]
    speed = _table(["run", "wall s", "peak RSS GiB"],
                   [[label, _wall(x), "n/a" if x.get("peak_rss_gib") is None else f"{x['peak_rss_gib']:.1f}"]
                    for label, x in runs])
    return quality + "\n\n" + speed + f"\n\nSpeed-up of the default over mergekit's omp: **{r['speedup']:.1f}x**"


def _wall(run: dict) -> str:
    """A run's wall seconds; for a run stopped early, its extrapolated total, labelled so."""
    if run.get("cut_short"):
        return (f"{run['extrapolated_seconds']:,.0f} (extrapolated: stopped after {run['seconds']:.0f} s, "
                f"{run['batches_done']} of {run['batches_total']} batches at {run['seconds_per_512']:.1f} s per 512 tokens)")
    return f"{run['seconds']:.0f}"


def vs_mergekit_light_multilingual() -> str:
    return _vs_mergekit("vs_mergekit_light_multilingual", "light")


def heal_light() -> str:
    """`heal.py` runs: bits per byte on a few texts (all of them are in the result files) and the
    share of the transplant-to-base gap closed; `heal_light_mix` adds its healed rows."""
    texts = ["en.txt", "de.txt", "argparse.py", "devanagari.txt", "japanese.txt", "thai.txt", "overall"]
    runs = [(r, "") for r in load("heal_light")["rows"]]
    runs += [(r, ", `--mix source`") for r in load("heal_light_mix")["rows"] if r["minutes"]]
    rows = []
    for r, extra in runs:
        label = r["variant"] + (" (no teacher)" if r["variant"].startswith("lm ") else "") + extra
        healed = bool(r["minutes"])
        rows.append([label, f"{r['minutes']:g}" if healed else "", r.get("steps", ""), *[f"{r[t]:.3f}" for t in texts],
                     f"{100 * r['gap_closed']:.1f}%" if "gap_closed" in r else ""])
    return _table(["training (loss / what trains / lr)", "minutes", "steps", *map(_text_name, texts), "gap closed"], rows)


def heal_multilingual(name: str, extra: tuple[str, ...] = ()) -> str:
    """`heal.py` runs on the bundled corpus plus the multilingual set's train part: bits per
    byte on some texts (all of them are in the result files), the gap closed and the greedy
    continuation of the German prompt; `extra` result files (or (file, label suffix) pairs) add
    their healed rows."""
    texts = ["en.txt", "de.txt", "argparse.py", "devanagari.txt", "south-indian.txt", "thai.txt", "chinese.txt",
             "overall"]
    extra = [e if isinstance(e, tuple) else (e, "") for e in extra]  # (result file, label suffix)
    runs = [(r, "") for r in load(name)["rows"]] + [(r, tag) for e, tag in extra for r in load(e)["rows"] if r["minutes"]]
    runs.sort(key=lambda rt: (bool(rt[0]["minutes"]), rt[0]["variant"], rt[1], rt[0]["minutes"]))
    rows = []
    for r, tag in runs:
        label = r["variant"] + (" (no teacher)" if r["variant"].startswith("lm ") else "") + tag
        rows.append([label, f"{r['minutes']:g}" if r["minutes"] else "", r.get("steps", ""),
                     *[f"{r[t]:.3f}" for t in texts], f"{100 * r['gap_closed']:.1f}%" if "gap_closed" in r else "",
                     "`" + r["continuation"].strip().replace("\n", " ").replace("|", "\\|")[:32] + "`"])
    return _table(["training (loss / what trains / lr)", "minutes", "steps", *map(_text_name, texts), "gap closed",
                   "\"Die Hauptstadt von Deutschland ist\""], rows)


def _signed(percent: float) -> str:
    text = f"{percent:+.2f}%" if abs(percent) < 10 else f"{percent:+.1f}%"
    return text.replace("-", "\u2212")


def dynamic_curve() -> str:
    """`dynamic.py`'s curve: per setting and text set, the fewer tokens reached and the rise in
    bits per byte against the plain model in mode A (exact) and mode B (upper bound)."""
    curve = {c["setting"]: c["sets"] for c in load("dynamic")["curve"]}
    settings = [("reduction=0.05", "`--reduction 0.05`"), ("reduction=0.15", "`--reduction 0.15`"),
                ("reduction=0.15,boundary=word", "`--reduction 0.15 --boundary word`"),
                ("merges=all", "every merge the batch allows")]
    sets = list(curve["merges=all"])
    rows = []
    for key, label in settings:
        cells = []
        for name in sets:
            r = curve[key][name]
            capped = " (every merge)" if r["reduction_to_limit"] >= 1.0 and key != "merges=all" else ""
            cells.append(f"{100 * r['reduction']:.1f}%{capped}; A {_signed(100 * r['rel_a'])}; B {_signed(100 * r['rel_b'])}")
        rows.append([label, *cells])
    return _table(["setting", *sets], rows)


def hypernet_quality() -> str:
    """`hypernet_quality.py`: bits per byte per tokenizer and method; Gemma-3 (the one with a donor
    model, so OMP too) per text, the others overall (the German unigram tokenizer on German);
    tokens per byte relative to SmolLM2's own tokenizer in brackets after the hypernetwork's figure."""
    rows = load("hypernet_quality")["rows"]
    own = next(r for r in rows if r["method"] == "base")
    names = {"gemma3": "Gemma-3", "mistral-v3": "Mistral v3 SP", "tekken": "Tekken",
             "de-unigram": "German unigram"}
    methods = [("hypernet+copy", True), ("hypernet", False), ("fvt", False), ("mean", False), ("omp", False)]
    out = []
    for tok in [t for t in dict.fromkeys(r["tokenizer"] for r in rows) if t in names]:
        by = {r["method"]: r for r in rows if r["tokenizer"] == tok}
        vocab = next(iter(by.values()))["vocab"]
        label = f"{names[tok]} ({round(vocab / 1000)}k{', trained here' if tok == 'de-unigram' else ''})"
        groups = ([["en.txt", "de.txt", "fr.txt", "argparse.py"], ["overall"]] if tok == "gemma3"
                  else [["de.txt"]] if tok == "de-unigram" else [["overall"]])
        for texts in groups:
            def cell(method: str, bold: bool) -> str:
                if method not in by:
                    return "\u2014"
                text = " / ".join(f"{by[method][t][0]:.3f}" for t in texts)
                if not bold:
                    return text
                ratios = " / ".join(f"{by[method][t][1] / own[t][1]:.2f}" for t in texts)
                return f"**{text}** ({ratios})"
            out.append([label if texts is groups[0] else names[tok], " / ".join(map(_text_name, texts)),
                        " / ".join(f"{own[t][0]:.3f}" for t in texts), *[cell(m, b) for m, b in methods]])
    return _table(["tokenizer (vocab)", "text", "SmolLM2 own", "**hypernet**", "predict all rows", "FVT", "mean", "OMP"], out)


def byte_lm_speed() -> str:
    """`byte_lm.py`: bytes/s, model calls and tokens fed per byte per mode and model, against
    plain `generate` and against ByteSampler's streaming rate measured in the same run."""
    r = load("byte_lm")
    side = next((m["bytesampler"] for m in r["models"] if "bytesampler" in m), None)
    ref = side["bytesampler_steps_per_s"] if side else None
    rows = []
    for m in r["models"]:
        name = m["model"]
        g1, g8 = m["generate"]["1"], m["generate"]["8"]
        each = f", {g1['bytes_per_prompt']} B per prompt" if "bytes_per_prompt" in g1 else ""
        rows.append([name, f"plain `model.generate`, greedy, batch 1 / 8{each}", f"{g1['plain_bytes_per_s']:.1f} / {g8['plain_bytes_per_s']:.1f}",
                     f"{g1['plain_calls_per_byte']:.2f} / {g8['plain_calls_per_byte']:.2f}", "", ""])
        if "plain_narrow_bytes_per_s" in g1:
            rows.append([name, f"plain `model.generate`, `nn.Linear` as W @ X^T (as ByteLM runs it), batch 1 / 8",
                         f"{g1['plain_narrow_bytes_per_s']:.1f} / {g8['plain_narrow_bytes_per_s']:.1f}",
                         f"{g1['plain_calls_per_byte']:.2f} / {g8['plain_calls_per_byte']:.2f}", "", ""])
        narrow = (f"; {g1['ratio_narrow']:.2f}x / {g8['ratio_narrow']:.2f}x plain with W @ X^T" if "ratio_narrow" in g1 else "")
        rows.append([name, f"`ByteLM.generate`, greedy, batch 1 / 8{each}", f"{g1['ours_bytes_per_s']:.1f} / {g8['ours_bytes_per_s']:.1f}",
                     f"{g1['ours_calls_per_byte']:.2f} / {g8['ours_calls_per_byte']:.2f}", "",
                     f"{g1['ratio']:.2f}x / {g8['ratio']:.2f}x plain" + narrow])
        sc = m["score"]
        cells = [sc[k] for k in ("cold_en", "warm_de", "py")]
        rows.append([name, "`ByteLM.score`, English / German / Python (~3,000 B each)",
                     " / ".join(f"{c['bytes_per_s']:.0f}" for c in cells), f"{max(c['calls_per_byte'] for c in cells):.3f}", "",
                     " / ".join(f"{c['bytes_per_s'] / ref:.0f}x" for c in cells) + " ByteSampler's streaming" if ref else ""])
        for k, st in m["stream"].items():
            rows.append([name, f"`ByteLM.stream`, look-ahead {k}", f"{st['bytes_per_s']:.1f}", f"{st['calls_per_byte']:.2f}",
                         f"{st.get('tokens_fed_per_byte', float('nan')):.2f}", f"{st['bytes_per_s'] / ref:.2f}x ByteSampler" if ref else ""])
        if "construct_seconds" in m:
            c = m["construct_seconds"]
            rows.append([name, "`ByteLM(model, vocab)` beyond loading the model, validity tables cold / warm",
                         f"{c['cold']:.1f} s / {c['warm']:.2f} s", "", "", ""])
    return _table(["model", "mode", "bytes/s", "calls/byte", "tokens fed/byte", "vs"], rows)


def byte_lm_bytesampler() -> str:
    """`byte_lm.py`'s side by side with ByteSampler: streaming, cold single prefixes, agreement."""
    side = next(m["bytesampler"] for m in load("byte_lm")["models"] if "bytesampler" in m)
    ok = [p for p in side["prefixes"] if "error" not in p and p["max_abs_dlogp"] < 1e-3]
    ahead = f", ByteLM's default look-ahead {side['ours_speculate']}" if "ours_speculate" in side else ""
    rows = [["streaming, steps/s (" + str(side["stream_bytes"]) + " bytes of held-out English" + ahead + ")",
             f"{side['ours_steps_per_s']:.1f}", f"{side['bytesampler_steps_per_s']:.1f}", f"{side['x_bytesampler_stream']:.2f}x"],
            *([["the same, ByteLM with the model as loaded (its own forward and `nn.Linear` layers, as ByteSampler runs it)",
                f"{side['ours_linear_steps_per_s']:.1f}", f"{side['bytesampler_steps_per_s']:.1f}",
                f"{side['x_bytesampler_stream_linear']:.2f}x"]] if "ours_linear_steps_per_s" in side else []),
            [f"{len(side['prefixes'])} cold single-prefix calls, seconds in all", f"{sum(side['prefix_seconds_ours']):.1f}",
             f"{sum(side['prefix_seconds_bytesampler']):.1f}",
             f"{sum(side['prefix_seconds_bytesampler']) / sum(side['prefix_seconds_ours']):.2f}x"],
            ["prefixes whose next-byte distributions agree to abs Δ log p < 1e-3", f"{len(ok)} of {len(side['prefixes'])}", "", ""]]
    return _table(["SmolLM2-135M, float32", "ByteLM", f"ByteSampler ({side['bytesampler_rev']})", "ByteLM vs ByteSampler"], rows)


def byte_brute_force() -> str:
    """`byte_brute_force.py`: distance of each method's next-byte distribution from brute force
    on the prefixes where the two methods disagree."""
    rows = []
    for r in load("byte_brute_force")["prefixes"]:
        if "skipped" in r:
            continue
        shown = r["prefix"].replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("|", "\\|")
        note = " (ends inside a character: the reference samples the ways to finish it)" if "note" in r else ""
        if "stream_step" in r:
            note += f" (streaming step {r['stream_step']})"
        rows.append([f"`{shown}`{note}", f"{r['ours']['total_variation']:.0e}", f"{r['ours']['max_abs_dlogp']:.0e}",
                     f"{r['bytesampler']['total_variation']:.0e}", f"{r['bytesampler']['max_abs_dlogp']:.0e}"])
    return _table(["prefix", "ByteLM: TV", "max abs Δ log p", "ByteSampler: TV", "max abs Δ log p"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "hypernet_quality": hypernet_quality,
    "byte_lm_speed": byte_lm_speed,
    "byte_lm_bytesampler": byte_lm_bytesampler,
    "byte_brute_force": byte_brute_force,
    "dynamic_curve": dynamic_curve,
    "heal_light": heal_light,
    "heal_light_bf16": lambda: heal_multilingual("heal_light_bf16", ("heal_light_bytes", "heal_light_budget",
                                                                     "heal_light_lora", "heal_light_lora_budget")),
    "heal_light_train": lambda: heal_multilingual("heal_light_train", ("heal_light_lr1e-3_stopped",)),
    "heal_heavy_train": lambda: heal_multilingual("heal_heavy_train", (("heal_heavy_bf16", ", bf16 autocast"),
                                                                       ("heal_heavy_lora", ", bf16 autocast"))),
    "bundled_bpb": bundled_bpb,
    "transplant_speed": transplant_speed,
    "light_multilingual": light_multilingual,
    "heavy_multilingual": heavy_multilingual,
    "light_candidates_dev": light_candidates_dev,
    "vs_mergekit_light_multilingual": vs_mergekit_light_multilingual,
    "vs_mergekit_heavy_multilingual": lambda: _vs_mergekit("vs_mergekit_heavy_multilingual", "heavy"),
    "vs_mergekit_light": lambda: _vs_mergekit("vs_mergekit", "light"),
    "vs_mergekit_heavy": lambda: _vs_mergekit("vs_mergekit", "heavy"),
}


def render(readme: str) -> str:
    """README with every marked block replaced by its renderer's table."""
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise SystemExit(f"readme_tables: README marks a table {name!r} that no renderer knows "
                             f"(known: {', '.join(TABLES)})")
        return m.group(1) + TABLES[name]() + "\n" + m.group(4)
    return BLOCK.sub(sub, readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff when README is stale")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md",
                                                       "rendered from results/"))
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
