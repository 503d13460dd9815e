"""Byte-level probabilities (ByteLM): speed per mode, prompt-boundary quality, ensemble.

One run, both bundled models, float32, this machine:
  * generation: transformers' greedy `generate` vs `ByteLM.generate` on the same prompts,
    batch 1 (prompts one after another) and batch 8 (one batched call), both stopping each
    prompt at the same count of new bytes (256; a batch runs until its slowest row is done);
    plain `generate` twice: with the model as loaded, and with its float32 `nn.Linear` layers
    run as W @ X^T as ByteLM runs them on CPU (`kernels/narrow_linear.py`; up to 12 rows by
    its numba kernel);
  * scoring a known text (`ByteLM.score`, per-byte conditionals of every prefix);
  * streaming next-byte distributions (`ByteLM.stream`), look-ahead 0, 2, 8 (the default)
    and 16, and the default with the model as loaded (its own forward and `nn.Linear` layers,
    not `narrow_linear` or `llama_call`; calls and tokens fed per byte);
  * `ByteLM(model, vocab)` construction beyond loading the model, cold and warm validity cache;
  * side by side with ByteSampler (SmolLM2, `--bytesampler-python`, run by
    `bytesampler_worker.py` in ByteSampler's own venv): streaming steps/s and the
    distributions at every step (ours also with the layers as loaded, as ByteSampler runs
    them), 30 cold single-prefix calls and their agreement;
  * prompt boundaries: prompts cut inside a word (English prose, Python stdlib code):
    log-likelihood of the rest of the word and exact match of the greedy completion for
    the exact method, naive tokenization, and transformers' `token_healing=True`;
  * ensemble: bits per byte of SmolLM2 + Gemma-3 (mix, product) vs each alone.
Without `--bytesampler-python` the reference is ByteSampler's ~12.5 bytes/s streaming with
SmolLM2-135M from the issue (not re-run).

    .venv/bin/python benchmarks/byte_lm.py [--quick] [--out results/byte_lm] \
        [--bytesampler-python /tmp/bs/venv/bin/python --bytesampler-rev COMMIT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tokensurgery.assets import corpus_text
from tokensurgery.inputs import open_model
from tokensurgery.byte_models import ByteLM, ByteScore
from tokensurgery.kernels.narrow_linear import narrow_linear

sys.path.insert(0, str(Path(__file__).parent))
from run_record import run_record  # noqa: E402  (this script's folder)

BYTESAMPLER_BPS = 12.5
STREAM_PROMPT = b"It was a"
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):\n    ret",
           "import numpy as", "The meaning of life is", "In the beginning God cre", "class Stack:\n    def __init__(self",
           "She opened the door and saw a"]


def held_out(lang: str, n: int, skip: int = 30_000) -> str:
    """Text from deep inside a bundled corpus (the tests and demos use its start)."""
    text = corpus_text(lang, skip + n + 100)[skip:].encode()
    return text[:n].decode("utf-8", "ignore")


def time_stream(blm: ByteLM, text: bytes, speculate: int | None = None, narrow: bool = True) -> tuple[float, list, int, int]:
    """Stream `text` after STREAM_PROMPT (`speculate` None: ByteLM's default), with the model's
    layers as W @ X^T or as loaded. Returns, from after the prompt's own call: seconds, the
    next-byte distribution before every byte, model calls and tokens fed."""
    blm.lm.narrow = narrow
    try:
        st, out = blm.stream(STREAM_PROMPT, speculate=speculate), []
        calls0, fed0, start = blm.lm.calls, blm.lm.tokens_fed, time.time()
        for b in text:
            out.append(st.logprobs())
            st.advance(b)
        return time.time() - start, out, blm.lm.calls - calls0, blm.lm.tokens_fed - fed0
    finally:
        blm.lm.narrow = True


def plain_generate(model, vocab, tok_ids: list[list[int]], budget: int, eos: int) -> tuple[list[bytes], int, float]:
    """transformers' greedy `generate` on left-padded token prompts, each row stopped once its
    new tokens spell `budget` bytes (or at EOS), as `ByteLM.generate(max_new_bytes=budget)`
    stops: both make the same bytes per prompt, and a batch runs until its slowest row is done.
    Returns each row's bytes (cut at the budget), the steps run and the seconds."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    width = max(map(len, tok_ids))
    ids = torch.full((len(tok_ids), width), eos)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(tok_ids):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1

    class ByteBudget(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.tensor([eos in row or len(vocab.decode_bytes(row)) >= budget for row in input_ids[:, width:].tolist()])

    start = time.time()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=budget, do_sample=False, pad_token_id=eos,
                         eos_token_id=eos, stopping_criteria=StoppingCriteriaList([ByteBudget()]))
    secs = time.time() - start
    rows = [vocab.decode_bytes(t for t in row if t != eos)[:budget] for row in out[:, width:].tolist()]
    return rows, out.shape[1] - width, secs


def bench_model(name: str, quick: bool, parts: set[str]) -> dict:
    folder = open_model(name, progress=False)
    t0 = time.time()
    blm = ByteLM.from_pretrained(folder, name=name)
    load_s = time.time() - t0
    model, vocab = blm.lm.model, blm.vocab
    res = {"model": name, "load_seconds": load_s}
    budget = 128 if quick else 256  # new bytes per prompt, plain and ours alike

    if "boundary" in parts:
        res["boundary"] = boundary(blm, folder, 6 if quick else 20)
    if "speed" not in parts:
        return res, blm

    # ---- generation -----------------------------------------------------------------
    gen = {}
    rows = [[blm.start] + vocab.encode(p) for p in PROMPTS]
    blm.generate(PROMPTS[0], max_new_bytes=8, temperature=0)  # warm-up (lazy validity rows, threads)
    for batch in (1, 8):
        plain, steps, secs = [], 0, 0.0
        for chunk in ([[r] for r in rows] if batch == 1 else [rows]):
            o, n, s = plain_generate(model, vocab, chunk, budget, blm.eos)
            plain, steps, secs = plain + o, steps + n, secs + s
        plain_bytes = sum(map(len, plain))
        # the same plain run with the model's layers as ByteLM runs them (W @ X^T on CPU)
        narrow_secs = 0.0
        with narrow_linear(model):
            for chunk in ([[r] for r in rows] if batch == 1 else [rows]):
                narrow_secs += plain_generate(model, vocab, chunk, budget, blm.eos)[2]
        calls0, start = blm.lm.calls, time.time()
        if batch == 1:
            ours = [blm.generate(p, max_new_bytes=budget, temperature=0, as_bytes=True) for p in PROMPTS]
        else:
            ours = blm.generate(PROMPTS, max_new_bytes=budget, temperature=0, as_bytes=True)
        ours_s, ours_calls = time.time() - start, blm.lm.calls - calls0
        ours_bytes = sum(map(len, ours))
        gen[batch] = {"bytes_per_prompt": budget, "plain_bytes": plain_bytes, "plain_steps": steps,
                      "plain_bytes_per_s": plain_bytes / secs, "plain_calls_per_byte": steps / plain_bytes,
                      "ours_bytes": ours_bytes, "ours_bytes_per_s": ours_bytes / ours_s, "ours_calls_per_byte": ours_calls / ours_bytes,
                      "ratio": (ours_bytes / ours_s) / (plain_bytes / secs),
                      "plain_narrow_bytes_per_s": plain_bytes / narrow_secs,
                      "ratio_narrow": (ours_bytes / ours_s) / (plain_bytes / narrow_secs)}
        print(f"[{name}] generate batch {batch}: plain {gen[batch]['plain_bytes_per_s']:.1f} B/s ({steps} steps; "
              f"{gen[batch]['plain_narrow_bytes_per_s']:.1f} B/s with W @ X^T layers), ours "
              f"{gen[batch]['ours_bytes_per_s']:.1f} B/s ({ours_calls} calls) ({gen[batch]['ratio']:.2f}x)", flush=True)
    res["generate"] = gen

    # ---- scoring ----------------------------------------------------------------------
    n_score = 1000 if quick else 3000
    score = {}
    for label, lang in (("cold_en", "en"), ("warm_de", "de"), ("py", "py")):
        text = held_out(lang, n_score)
        calls0, start = blm.lm.calls, time.time()
        s = blm.score(text)
        secs = time.time() - start
        n = len(text.encode())
        score[label] = {"bytes": n, "bytes_per_s": n / secs, "calls_per_byte": (blm.lm.calls - calls0) / n,
                        "bits_per_byte": s.bits_per_byte}
        print(f"[{name}] score {label}: {n / secs:.0f} B/s, {(blm.lm.calls - calls0) / n:.3f} calls/B, "
              f"{s.bits_per_byte:.3f} bpb", flush=True)
    res["score"] = score

    # ---- streaming ----------------------------------------------------------------------
    stream_text = held_out("en", 120 if quick else 300, skip=40_000).encode()
    streams = {}
    # the last row: ByteLM's default look-ahead with the model's layers as loaded
    for k, speculate, narrow in ((0, 0, True), (2, 2, True), (8, 8, True), (16, 16, True), ("8, nn.Linear as is", 8, False)):
        secs, _, calls, fed = time_stream(blm, stream_text, speculate, narrow)
        streams[k] = {"bytes": len(stream_text), "bytes_per_s": len(stream_text) / secs,
                      "calls_per_byte": calls / len(stream_text), "tokens_fed_per_byte": fed / len(stream_text)}
        print(f"[{name}] stream speculate={k}: {streams[k]['bytes_per_s']:.1f} B/s, {streams[k]['calls_per_byte']:.2f} calls/B, "
              f"{streams[k]['tokens_fed_per_byte']:.2f} tokens fed/B", flush=True)
    res["stream"] = streams

    # ---- construction beyond loading the model: cold (empty cache folder) and warm ----------
    import tempfile

    construct = {}
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("TOKENSURGERY_CACHE")
        os.environ["TOKENSURGERY_CACHE"] = tmp
        try:
            for label in ("cold", "warm"):
                start = time.time()
                ByteLM(model, vocab, name=name)
                construct[label] = time.time() - start
        finally:
            if saved is None:
                del os.environ["TOKENSURGERY_CACHE"]
            else:
                os.environ["TOKENSURGERY_CACHE"] = saved
    res["construct_seconds"] = construct
    print(f"[{name}] ByteLM(model, vocab): cold {construct['cold']:.1f} s, warm {construct['warm']:.2f} s", flush=True)
    return res, blm


# next-byte distributions compared with ByteSampler: mid-word, mid-character, whitespace runs
# (digits and NBSP after them), newlines, code, numbers, URLs, JSON, other scripts
SIDE_PREFIXES = [b"The capital of France is", b"The capital of Fr", b"Hello wor", b"Hello world.\n\n",
                 b"Hello world.\n\n\xf0\x9f", b"Die Hauptstadt von Deutschl", b"Gr\xc3\xbc\xc3", b"\xe4\xb8\xad\xe6",
                 "中文的".encode(), b"values:\n    1, 2", b"x =  1", b"a  ", b"    ", b"def f(x):\n    ret",
                 b"def f(x):\n    return x\n\n", b"import numpy as", b"https://www.exa", b'{"key": "val', b'{"a": [1, 2',
                 b"3.1415", b"In 1999, the", b"price: $1,0", b"tab\tsep", b"line one\r\n", b"The  quick",
                 "naïve caf".encode(), "x\u00a0".encode(), b"C'est l'", b"they're", "emoji \U0001F44B ok".encode()]


def side_by_side(blm: ByteLM, folder: Path, python: str, rev: str, quick: bool) -> dict:
    """ByteSampler (its own venv, `bytesampler_worker.py`) and ByteLM on the same bytes:
    streaming steps/s and the distributions at every step, cold single-prefix calls."""
    import tempfile

    from tokensurgery.byte_models import ZeroProbability

    stream_text = held_out("en", 120 if quick else 300, skip=40_000).encode()
    job = {"model_dir": str(folder), "start_token": blm.vocab.tokens[blm.start], "prompt": STREAM_PROMPT.decode("latin-1"),
           "stream_text": stream_text.decode("latin-1"), "prefixes": [p.decode("latin-1") for p in SIDE_PREFIXES]}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "job.json").write_text(json.dumps(job))
        print(f"[bytesampler] running {python} {Path(__file__).parent / 'bytesampler_worker.py'}", flush=True)
        subprocess.run([python, str(Path(__file__).parent / "bytesampler_worker.py"), str(Path(tmp, "job.json")),
                        str(Path(tmp, "out.json"))], check=True)
        theirs = json.loads(Path(tmp, "out.json").read_text())
    blm.stream(STREAM_PROMPT).logprobs()  # warm-up, as the worker does
    ours_s, ours, _, _ = time_stream(blm, stream_text)
    linear_s = time_stream(blm, stream_text, narrow=False)[0]  # the layers as loaded, as ByteSampler runs them

    def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
        """Over the next byte given that the text goes on (bytes 0..255 renormalised: ByteSampler's
        end entry is the mass of every special token, ours that of the end-of-text token):
        total variation, and max |difference of log-probabilities| where either is above 1e-4
        (below that float32 logits leave log-probabilities noisy); then both end probabilities."""
        la, lb = a[:256] - np.logaddexp.reduce(a[:256]), b[:256] - np.logaddexp.reduce(b[:256])
        pa, pb = np.exp(la), np.exp(lb)
        keep = np.maximum(pa, pb) > 1e-4
        dlog = float(np.abs(la[keep] - lb[keep]).max()) if keep.any() else 0.0
        return float(0.5 * np.abs(pa - pb).sum()), dlog, float(np.exp(a[256])), float(np.exp(b[256]))

    steps = [compare(o, np.array(t)) for o, t in zip(ours, theirs["stream"])]
    prefixes, ours_times = [], []
    for p, t in zip(SIDE_PREFIXES, theirs["prefixes"]):
        start = time.time()
        try:
            o = blm.next_byte_logprobs(p)
        except ZeroProbability as e:
            prefixes.append({"prefix": p.decode("utf-8", "backslashreplace"), "raw": p.hex(), "error": str(e)})
            ours_times.append(time.time() - start)
            continue
        ours_times.append(time.time() - start)
        tv, dlog, eo, et = compare(o, np.array(t))
        prefixes.append({"prefix": p.decode("utf-8", "backslashreplace"), "raw": p.hex(), "total_variation": tv,
                         "max_abs_dlogp": dlog, "ours_top": int(np.argmax(o[:256])), "bytesampler_top": int(np.argmax(t[:256])),
                         "end_ours": eo, "end_bytesampler": et, "ours_logprobs": [round(float(x), 10) for x in o],
                         "bytesampler_logprobs": [round(float(x), 10) for x in t]})
    out = {"bytesampler_rev": rev, "bytesampler_transformers": theirs["transformers"], "stream_bytes": len(stream_text),
           "ours_speculate": blm.speculate, "ours_steps_per_s": len(stream_text) / ours_s, "bytesampler_steps_per_s": len(stream_text) / theirs["stream_seconds"],
           "stream_max_total_variation": max(s[0] for s in steps), "stream_max_abs_dlogp": max(s[1] for s in steps),
           "stream_steps_dlogp_above_1e-3": sum(s[1] >= 1e-3 for s in steps),
           "stream_worst_steps": [{"offset": i, "next": stream_text[i : i + 1].decode("latin-1"),
                                   "before": stream_text[max(0, i - 12) : i].decode("utf-8", "backslashreplace"),
                                   "total_variation": steps[i][0], "max_abs_dlogp": steps[i][1],
                                   "raw": (STREAM_PROMPT + stream_text[:i]).hex(),  # the whole prefix, for brute force
                                   "ours_logprobs": [round(float(x), 10) for x in ours[i]],
                                   "bytesampler_logprobs": [round(float(x), 10) for x in theirs["stream"][i]]}
                                  for i in sorted(range(len(steps)), key=lambda i: -steps[i][1])[:5]],
           "prefix_seconds_ours": ours_times, "prefix_seconds_bytesampler": theirs["prefix_seconds"], "prefixes": prefixes}
    out["x_bytesampler_stream"] = out["ours_steps_per_s"] / out["bytesampler_steps_per_s"]
    out["ours_linear_steps_per_s"] = len(stream_text) / linear_s
    out["x_bytesampler_stream_linear"] = out["ours_linear_steps_per_s"] / out["bytesampler_steps_per_s"]
    print(f"[bytesampler] stream: ours {out['ours_steps_per_s']:.1f} steps/s, ByteSampler {out['bytesampler_steps_per_s']:.1f} "
          f"({out['x_bytesampler_stream']:.2f}x; ours with nn.Linear as is {out['ours_linear_steps_per_s']:.1f}); max TV {out['stream_max_total_variation']:.2e}; prefixes: ours "
          f"{sum(ours_times):.1f} s, ByteSampler {sum(theirs['prefix_seconds']):.1f} s", flush=True)
    return out


def cut_points(text: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, rest of the word) pairs cut inside words of 5+ identifier characters."""
    rng = random.Random(seed)
    words = [m for m in re.finditer(r"[A-Za-z_][A-Za-z_0-9]{4,}", text) if m.start() > 200]
    out = []
    for m in rng.sample(words, min(n, len(words))):
        cut = m.start() + rng.randint(1, len(m.group()) - 2)
        out.append((text[max(0, cut - 400) : cut], text[cut : m.end()]))
    return out


def boundary(blm: ByteLM, folder: Path, n: int) -> dict:
    """Log-likelihood of the rest of a cut word and greedy exact match, three ways."""
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(folder)
    model, vocab = blm.lm.model, blm.vocab
    table = {}
    for label, lang in (("prose", "en"), ("code", "py")):
        pairs = cut_points(held_out(lang, 20_000, skip=10_000), n, seed=0)
        ll = {"exact": [], "naive": []}
        hit = {"exact": 0, "naive": 0, "token_healing": 0}
        crashed = []
        for prompt, rest in pairs:
            ll["exact"].append(blm.score(rest, context=prompt).total)
            p_ids, r_ids = vocab.encode(prompt), vocab.encode(rest)
            seq = torch.tensor([[blm.start, *p_ids, *r_ids]])
            with torch.no_grad():
                lp = model(seq).logits[0, :-1].double().log_softmax(-1)
            ll["naive"].append(float(lp[torch.arange(len(p_ids), len(p_ids) + len(r_ids)), seq[0, len(p_ids) + 1:]].sum()))
            want = rest.encode()
            hit["exact"] += blm.generate(prompt, max_new_bytes=len(want), temperature=0, as_bytes=True) == want
            ids = torch.tensor([[blm.start, *p_ids]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(want), do_sample=False,
                                 pad_token_id=blm.eos)
            hit["naive"] += vocab.decode_bytes(out[0, ids.shape[1]:].tolist())[: len(want)] == want
            enc = hf_tok(prompt, return_tensors="pt")
            try:  # healing re-tokenizes the prompt itself, so no attention mask goes in
                out = model.generate(input_ids=enc.input_ids, max_new_tokens=len(want), do_sample=False, token_healing=True,
                                     tokenizer=hf_tok, pad_token_id=blm.eos)
                full = vocab.decode_bytes(t for t in out[0].tolist() if vocab.kinds[t].value != "special")
                hit["token_healing"] += (prompt.strip().encode() + want) in full
            except Exception as e:  # noqa: BLE001 - transformers' healing crashes on some prompts: counted as a miss
                crashed.append(f"{type(e).__name__}: {str(e)[:60]}")
        table[label] = {"n": len(pairs), "mean_loglik_nats": {k: float(np.mean(v)) for k, v in ll.items()},
                        "exact_match": {k: v / len(pairs) for k, v in hit.items()}}
        table[label]["token_healing_crashed"] = len(crashed)
        table[label]["token_healing_errors"] = sorted(set(crashed))
        print(f"[{blm.name}] boundary {label}: {table[label]}", flush=True)
    return table


def bench_ensemble(lms: list[ByteLM], quick: bool) -> dict:
    out = {}
    n = 600 if quick else 1500
    for lang in ("en", "de", "py"):
        text = held_out(lang, n, skip=50_000)
        dists = [m.distributions(text) for m in lms]
        row = {}
        from tokensurgery.byte_models.exact.ensemble import combine

        data = np.frombuffer(text.encode(), dtype=np.uint8)
        for name, d in [(m.name, d) for m, d in zip(lms, dists)] + \
                [("mix", combine(dists, np.array([0.5, 0.5]), "mix")), ("product", combine(dists, np.array([0.5, 0.5]), "product"))]:
            row[name] = ByteScore.of(d[np.arange(len(data)), data]).bits_per_byte
        out[lang] = row
        print(f"[ensemble] {lang}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return out


def write_markdown(results: dict, path: Path, command: str) -> None:
    side = next((r["bytesampler"] for r in results["models"] if "bytesampler" in r), None)
    ref = side["bytesampler_steps_per_s"] if side else BYTESAMPLER_BPS
    runs = results.get("runs", [])
    lines = ["# Byte-level probabilities (ByteLM)", "", f"Command: `{command}`", ""]
    if runs:
        last = runs[-1]
        lines += [f"Last run: commit {last['commit']}, {last['date']}, {last['cpu_model']}, {last['cpus']} CPUs, torch "
                  f"{last['torch']}, transformers {last['transformers']}, load average at start "
                  f"{last['load_average_at_start']}.", ""]
    lines += ["Float32. " + (f"ByteSampler reference: {ref:.1f} steps/s streaming with SmolLM2-135M, measured side by side "
                             f"in this run (below)." if side else
                             f"ByteSampler reference: {BYTESAMPLER_BPS} bytes/s streaming with SmolLM2-135M (figure "
                             "from the issue; not re-run)."), ""]
    lines += ["## Speed", "", "| model | mode | batch | bytes/s | calls/byte | tokens fed/byte | vs reference |",
              "|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        for b, g in r["generate"].items():
            each = f"{g['bytes_per_prompt']} B per prompt" if "bytes_per_prompt" in g else "plain's bytes per prompt"
            lines.append(f"| {r['model']} | plain `model.generate` (greedy, {each}) | {b} | {g['plain_bytes_per_s']:.1f} | "
                         f"{g['plain_calls_per_byte']:.3f} | | |")
            if "plain_narrow_bytes_per_s" in g:
                lines.append(f"| {r['model']} | plain `model.generate`, nn.Linear as W @ X^T | {b} | "
                             f"{g['plain_narrow_bytes_per_s']:.1f} | {g['plain_calls_per_byte']:.3f} | | |")
            narrow = f", {g['ratio_narrow']:.2f}x plain with W @ X^T" if "ratio_narrow" in g else ""
            lines.append(f"| {r['model']} | ByteLM.generate (greedy) | {b} | {g['ours_bytes_per_s']:.1f} | "
                         f"{g['ours_calls_per_byte']:.3f} | | {g['ratio']:.2f}x plain{narrow} |")
        for label, sc in r["score"].items():
            lines.append(f"| {r['model']} | score ({label}, {sc['bytes']} B) | 1 | {sc['bytes_per_s']:.0f} | "
                         f"{sc['calls_per_byte']:.3f} | | {sc['bytes_per_s'] / ref:.1f}x ByteSampler |")
        for k, st in r["stream"].items():
            fed = f"{st['tokens_fed_per_byte']:.2f}" if "tokens_fed_per_byte" in st else ""
            lines.append(f"| {r['model']} | stream (look-ahead {k}) | 1 | {st['bytes_per_s']:.1f} | "
                         f"{st['calls_per_byte']:.2f} | {fed} | {st['bytes_per_s'] / ref:.2f}x ByteSampler |")
    built = [r for r in results["models"] if "construct_seconds" in r]
    if built:
        lines += ["", "`ByteLM(model, vocab)` beyond loading the model (validity tables: cold = empty cache folder, "
                  "computed and written; warm = read back): " + "; ".join(
                      f"{r['model']} cold {r['construct_seconds']['cold']:.1f} s, warm {r['construct_seconds']['warm']:.2f} s"
                      for r in built) + "."]
    if side:
        ok = [p for p in side["prefixes"] if "error" not in p and p["max_abs_dlogp"] < 1e-3]
        lines += ["", "## Side by side with ByteSampler (SmolLM2-135M)", "",
                  f"ByteSampler at commit {side['bytesampler_rev']} in its own venv (transformers "
                  f"{side['bytesampler_transformers']}), same model weights, same start token, same bytes.", "",
                  f"- Streaming {side['stream_bytes']} bytes after `{STREAM_PROMPT.decode()}`: ours "
                  f"(default look-ahead{' ' + str(side['ours_speculate']) if 'ours_speculate' in side else ''}) "
                  f"{side['ours_steps_per_s']:.1f} steps/s, ByteSampler {side['bytesampler_steps_per_s']:.1f} "
                  f"({side['x_bytesampler_stream']:.2f}x)" + (
                      f"; ours with the model's nn.Linear layers as they are (as ByteSampler runs them) "
                      f"{side['ours_linear_steps_per_s']:.1f} ({side['x_bytesampler_stream_linear']:.2f}x)"
                      if "ours_linear_steps_per_s" in side else "") + ". Distributions at every step: max total variation "
                  f"{side['stream_max_total_variation']:.1e}, max |Δ log p| (entries above 1e-4) "
                  f"{side['stream_max_abs_dlogp']:.1e}; steps with |Δ log p| >= 1e-3: {side['stream_steps_dlogp_above_1e-3']}.",
                  f"- {len(side['prefixes'])} prefixes, each a cold call (`next_byte_logprobs` / a new sampler): ours "
                  f"{sum(side['prefix_seconds_ours']):.1f} s, ByteSampler {sum(side['prefix_seconds_bytesampler']):.1f} s; "
                  f"agree to |Δ log p| < 1e-3 on {len(ok)} of {len(side['prefixes'])}.", "",
                  "Next-byte distributions given that the text goes on (bytes renormalised; the end probability is "
                  "compared apart: ByteSampler's counts every special token, ours the end-of-text token). Worst stream "
                  "steps: " + "; ".join(f"`{w['before']!r}` + `{w['next']!r}` (TV {w['total_variation']:.1e}, "
                                       f"|Δ log p| {w['max_abs_dlogp']:.1e})" for w in side.get("stream_worst_steps", [])[:3]) + ".",
                  "", "| prefix | total variation | max abs Δ log p | top byte ours / ByteSampler | P(end) ours / ByteSampler |",
                  "|---|---|---|---|---|"]
        for p in side["prefixes"]:
            shown = p["prefix"].replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace("|", "\\|")
            if "error" in p:
                lines.append(f"| `{shown}` | ours raised: {p['error']} | | | |")
            else:
                lines.append(f"| `{shown}` | {p['total_variation']:.1e} | {p['max_abs_dlogp']:.1e} | "
                             f"{p['ours_top']} / {p['bytesampler_top']} | {p['end_ours']:.1e} / {p['end_bytesampler']:.1e} |")
    lines += ["", "## Prompt boundaries (prompts cut inside a word)", "",
              "| model | text | n | loglik exact | loglik naive | greedy match exact | naive | token_healing |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        for label, b in r["boundary"].items():
            em = b["exact_match"]
            fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
            lines.append(f"| {r['model']} | {label} | {b['n']} | {b['mean_loglik_nats']['exact']:.2f} | "
                         f"{b['mean_loglik_nats']['naive']:.2f} | {fmt(em['exact'])} | {fmt(em['naive'])} | {fmt(em['token_healing'])} |")
    lines += ["", "Log-likelihoods are mean nats of the rest of the word (higher is better). transformers' "
              "token healing raised inside `generate` on some prompts (counted as misses): "
              + ", ".join(f"{r['model']} {label} {b.get('token_healing_crashed', 0)}/{b['n']}"
                          for r in results["models"] for label, b in r["boundary"].items()) + ".", "",
              "## Ensemble: bits per byte on held-out text", "", "| text | " + " | ".join(results["ensemble"]["en"]) + " |",
              "|---" * (1 + len(results["ensemble"]["en"])) + "|"]
    for lang, row in results["ensemble"].items():
        lines.append(f"| {lang} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Smaller texts and fewer cut points (a smoke run).")
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--out", default="results/byte_lm", type=Path, help="Writes OUT.json and OUT.md.")
    ap.add_argument("--parts", default="speed,boundary,ensemble,bytesampler",
                    help="Which parts to run; the others are kept from an existing OUT.json.")
    ap.add_argument("--bytesampler-python", default=None,
                    help="Python of a venv with ByteSampler installed (see bytesampler_worker.py); without it the "
                         "side-by-side part is skipped.")
    ap.add_argument("--bytesampler-rev", default="unknown", help="ByteSampler's commit, recorded with the results.")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if not args.bytesampler_python:
        parts.discard("bytesampler")
    torch.manual_seed(0)
    record = run_record()
    command = record["command"]
    print(command, flush=True)
    old = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").exists() else {}
    results, lms = {"command": command, "runs": old.get("runs", []) + [record], "models": []}, []
    for i, name in enumerate(args.models.split(",")):
        r, blm = bench_model(name, args.quick, parts)
        if "bytesampler" in parts and name == "smollm2-135m":
            r["bytesampler"] = side_by_side(blm, open_model(name, progress=False), args.bytesampler_python,
                                            args.bytesampler_rev, args.quick)
        previous = next((m for m in old.get("models", []) if m["model"] == name), {})
        results["models"].append({**previous, **r})
        lms.append(blm)
    results["ensemble"] = bench_ensemble(lms, args.quick) if len(lms) > 1 and "ensemble" in parts else old.get("ensemble", {})
    if not {"speed", "boundary", "ensemble"} <= parts and old:
        results["command"] = old.get("command", command) + f"; then {command}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    if results["ensemble"]:
        write_markdown(results, args.out.with_suffix(".md"), results["command"])
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
