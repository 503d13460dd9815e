"""Bits per byte of SmolLM2-135M given tokenizers it never saw, embeddings from: the trained
hypernetwork, FVT, the mean row, and (Gemma-3, which has a donor model) OMP — side by side,
on the same held-out text, without writing checkpoints (the base is loaded once per row
and its embeddings swapped).

Tokenizers: Gemma-3's, Mistral v3 SentencePiece and Tekken (from mistral_common), and a
16k unigram tokenizer trained here on German text (music21's `de` excerpt minus its held-out
start). Held-out text: the first --max-bytes bytes of the en/de/fr excerpts and of
argparse.py, none of which the hypernetwork trained on (see `tokensurgery/corpus.py`).

Rows: `hypernet` predicts every row; `hypernet+copy` copies rows of tokens SmolLM2 shares
(the transplant's `--method hypernet`); `fvt`, `mean`, `omp` as in `tokensurgery transplant`.

Run: .venv/bin/python benchmarks/hypernet_quality.py --hypernet results/hypernet_smollm2
Writes results/hypernet_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

from tokensurgery import Vocabulary, VocabMap
from tokensurgery.assets import corpus_text, text_paths
from tokensurgery.inputs import open_model, open_vocabulary, vocabulary_of_folder
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.evaluate import load_causal_lm, load_model, score_files
from tokensurgery.hypernets import Hypernet, predict_embeddings
from tokensurgery.transplant import TransplantOptions, new_embeddings
from run_record import run_record  # this script's folder is on sys.path

BASE = "smollm2-135m"


def without_bos(vocab: Vocabulary) -> Vocabulary:
    """The vocabulary scored without a BOS in front (SmolLM2, the base, was trained without one)."""
    plain = copy.copy(vocab)
    plain.bos_added = None
    return plain


def german_unigram(folder: Path, holdout_bytes: int = 16384, size: int = 16000) -> Path:
    """A unigram tokenizer trained on the German excerpt after its held-out start."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = corpus_text("de")
    text = text[len(text.encode()[:holdout_bytes].decode("utf-8", "ignore")):]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
                                      initial_alphabet=sorted(set(text)), max_piece_length=16)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def mistral_file(name: str) -> Path:
    return Path(importlib.util.find_spec("mistral_common").origin).parent / "data" / name


def swap(model, inp: torch.Tensor, out: torch.Tensor | None) -> None:
    """New embedding matrices; a separate output matrix unties the model."""
    model.resize_token_embeddings(inp.shape[0], mean_resizing=False)
    model.get_input_embeddings().weight.data.copy_(inp)
    if out is not None:
        model.lm_head.weight = torch.nn.Parameter(out.clone())
        model.config.tie_word_embeddings = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hypernet", type=Path, default=Path("results/hypernet_smollm2"))
    ap.add_argument("--tokenizers", default="gemma3,mistral-v3,tekken,de-unigram")
    ap.add_argument("--methods", default="hypernet,hypernet+copy,fvt,mean,omp")
    ap.add_argument("--langs", default="en,de,fr,py")
    ap.add_argument("--max-bytes", type=int, default=6000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "results")
    args = ap.parse_args()
    record = run_record()
    command = record["command"]
    print(f"command: {command}", flush=True)
    files = [p for lang in args.langs.split(",") for p in text_paths(lang)]
    base_dir = open_model(BASE)
    base_vocab = vocabulary_of_folder(base_dir, name=BASE)
    base_emb = load_embeddings(base_dir)
    net = Hypernet.from_pretrained(args.hypernet, base_emb)
    tmp = Path(tempfile.mkdtemp(prefix="hn-bench-"))
    targets = {"gemma3": lambda: open_vocabulary("gemma3-270m"),
               "mistral-v3": lambda: open_vocabulary(mistral_file("mistral_instruct_tokenizer_240323.model.v3")),
               "tekken": lambda: open_vocabulary(mistral_file("tekken_240911.json")),
               "de-unigram": lambda: open_vocabulary(german_unigram(tmp / "de"))}
    rows = []
    model, tok = load_causal_lm(base_dir)
    scores = score_files(model, tok, files, max_bytes=args.max_bytes)
    rows.append({"tokenizer": "smollm2 (own)", "method": "base", "vocab": len(base_vocab), "seconds": 0.0,
                 **{s.name: [s.bits_per_byte, s.tokens_per_byte] for s in scores}})
    print(rows[-1], flush=True)
    for name in args.tokenizers.split(","):
        vocab = targets[name]()
        vm = VocabMap.build(base_vocab, vocab)
        print(f"{name}: {len(vocab):,} tokens, {len(vm.shared):,} shared, {len(vm.new_text):,} new text", flush=True)
        for method in args.methods.split(","):
            if method == "omp" and name != "gemma3":
                continue  # OMP needs a donor model that uses the tokenizer: only Gemma-3 has one here
            start = time.perf_counter()
            if method == "hypernet":
                new = predict_embeddings(net, vm)
                inp, out = new.input, new.output
            else:
                opts = TransplantOptions(method="hypernet", hypernet=str(args.hypernet)) if method == "hypernet+copy" \
                    else TransplantOptions(method=method)
                donor_emb = load_embeddings(open_model("gemma3-270m")) if method == "omp" else None
                made = new_embeddings(base_emb, donor_emb, vm, opts)
                inp, out = made.embeddings.input, made.embeddings.output
            seconds = time.perf_counter() - start
            model = load_model(base_dir)
            swap(model, inp, out)
            scores = score_files(model, without_bos(vocab), files, max_bytes=args.max_bytes)
            rows.append({"tokenizer": name, "method": method, "vocab": len(vocab), "seconds": round(seconds, 1),
                         **{s.name: [s.bits_per_byte, s.tokens_per_byte] for s in scores}})
            print(rows[-1], flush=True)
            del model
    names = [p.name for p in files] + ["overall"]
    base_row = rows[0]
    lines = [f"SmolLM2-135M with new tokenizers; bits per byte (tokens per byte) on the first {args.max_bytes} bytes of "
             "each held-out text; 256-token windows, stride 128.", "",
             "| tokenizer | method | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['tokenizer']} | {r['method']} | " + " | ".join(f"{r[n][0]:.4f} ({r[n][1]:.3f})" for n in names) + " |")
    lines += ["", "Sequence length relative to SmolLM2's own tokenizer (tokens per byte ratio; < 1 = shorter):", "",
              "| tokenizer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        if r["method"] in ("base", "fvt"):
            lines.append(f"| {r['tokenizer']} | " + " | ".join(f"{r[n][1] / base_row[n][1]:.2f}" for n in names) + " |")
    table = "\n".join(lines)
    print(table)
    training = json.loads((args.hypernet / "training.json").read_text()) if (args.hypernet / "training.json").exists() else {}
    meta = {**record, "base": BASE, "langs": args.langs, "max_bytes": args.max_bytes, "hypernet_training": training}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hypernet_quality.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "hypernet_quality.md").write_text(f"Command: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
