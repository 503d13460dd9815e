"""Retrofit SmolLM2-135M into a hierarchical byte model on this CPU and compare it with
SmolLM2 reading its own tokenizer.

The backbone is SmolLM2's transformer, frozen. Stages, each for a fixed wall-clock budget:
1. distill: the Byte2Word encoder learns to put each word where SmolLM2's own (mean token)
   embedding of that word is (no backbone call: cheap);
2. decoder: the byte decoder learns the next word's bytes from the frozen encoder + backbone
   (the backbone runs without gradients, under bfloat16 autocast unless --fp32-context);
3. joint: encoder and decoder together on next-byte + distillation losses (gradients flow
   through the frozen backbone into the encoder).
After every stage: bits per byte on the first --eval-bytes bytes of the held-out en/de/fr
excerpts and argparse.py (left out of the bundled training corpus), in windows of 128 words;
SmolLM2 is scored on the same text in non-overlapping windows of 128 tokens (about the same
bytes) and, for reference, with its usual 256-token windows and 128-token stride.

Run: .venv/bin/python benchmarks/byte_retrofit.py --out results/byte_retrofit
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tokensurgery.assets import corpus_path
from tokensurgery.inputs import open_model
from tokensurgery.byte_models.trainable.score import score_bytes
from tokensurgery.byte_models.trainable.hierarchical import HierarchicalConfig, HierarchicalLM
from tokensurgery.byte_models.trainable.train import ByteTrainConfig, train_bytes
from tokensurgery.corpus import bundled_corpus
from tokensurgery.evaluate import load_causal_lm, read_text_file, score_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distill-minutes", type=float, default=3.0)
    ap.add_argument("--decoder-minutes", type=float, default=25.0)
    ap.add_argument("--joint-minutes", type=float, default=7.0)
    ap.add_argument("--d-byte", type=int, default=256)
    ap.add_argument("--decoder-layers", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--context-bytes", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--joint-lr", type=float, default=3e-4)
    ap.add_argument("--fp32-context", action="store_true", help="decoder stage: no bfloat16 autocast for the frozen backbone")
    ap.add_argument("--eval-bytes", type=int, default=6000)
    ap.add_argument("--langs", default="en,de,fr,py")
    ap.add_argument("--out", type=Path, default=Path("results/byte_retrofit"))
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)
    print("command:", command, flush=True)
    texts = {lang: read_text_file(corpus_path(lang), args.eval_bytes) for lang in args.langs.split(",")}

    folder = open_model("smollm2-135m")
    lm, vocab = load_causal_lm(folder)
    reference = {}
    for lang, text in texts.items():
        same = score_text(lm, vocab, text, lang, window=128, stride=128, progress=False)
        usual = score_text(lm, vocab, text, lang, progress=False)
        reference[lang] = {"bpb": same.bits_per_byte, "bpb_256_128": usual.bits_per_byte,
                           "positions_per_byte": same.n_tokens / same.n_bytes}
    print("smollm2:", json.dumps(reference), flush=True)
    del lm

    torch.manual_seed(0)
    config = HierarchicalConfig(d_byte=args.d_byte, decoder_layers=args.decoder_layers)
    model = HierarchicalLM.from_subword("smollm2-135m", config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    corpus = bundled_corpus()
    stages = [("distill", args.distill_minutes, args.lr), ("decoder", args.decoder_minutes, args.lr),
              ("all", args.joint_minutes, args.joint_lr)]
    rows = []
    for stage, minutes, lr in stages:
        if minutes <= 0:
            continue
        cfg = ByteTrainConfig(steps=1_000_000, batch_size=args.batch_size, context_bytes=args.context_bytes, lr=lr,
                              lr_warmup=20, max_minutes=minutes, lr_by_time=True, stage=stage, save_every=10**9,
                              bf16_context=not args.fp32_context)
        start = time.perf_counter()
        result = train_bytes(model, corpus, args.out / stage, cfg, force=True)
        row = {"stage": stage, "minutes": minutes, "steps": result.steps_done,
               "train_seconds": round(time.perf_counter() - start, 1), "last_loss": result.history[-1]["loss"]}
        for lang, text in texts.items():
            score = score_bytes(model, text.encode())
            row[lang] = {"bpb": score.bits_per_byte, "positions_per_byte": score.positions_per_byte}
        rows.append(row)
        print(json.dumps(row), flush=True)

    langs = list(texts)
    total = sum(r["minutes"] for r in rows)
    lines = [f"Retrofit of SmolLM2-135M (frozen backbone) into a hierarchical byte model: {total:g} min on this "
             f"machine (2-core CPU), {trainable / 1e6:.1f}M trainable parameters (byte encoder/decoder, d_byte "
             f"{args.d_byte}, {args.decoder_layers} decoder layers); held-out first {args.eval_bytes} bytes.", "",
             "| model | minutes | steps | " + " | ".join(f"{l} bpb" for l in langs) + " | backbone positions/byte |",
             "|---|---|---|" + "---|" * (len(langs) + 1)]
    pos = sum(reference[l]["positions_per_byte"] for l in langs) / len(langs)
    lines.append("| SmolLM2-135M, own tokenizer (128-token windows) | | | "
                 + " | ".join(f"{reference[l]['bpb']:.3f}" for l in langs) + f" | {pos:.3f} |")
    lines.append("| SmolLM2-135M, own tokenizer (256-token windows, stride 128) | | | "
                 + " | ".join(f"{reference[l]['bpb_256_128']:.3f}" for l in langs) + " | |")
    elapsed = 0.0
    for r in rows:
        elapsed += r["minutes"]
        pos = sum(r[l]["positions_per_byte"] for l in langs) / len(langs)
        lines.append(f"| retrofit after {r['stage']} ({elapsed:g} min in all) | {r['minutes']:g} | {r['steps']} | "
                     + " | ".join(f"{r[l]['bpb']:.3f}" for l in langs) + f" | {pos:.3f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": command, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "trainable_params": trainable}
    out = Path(str(args.out).rstrip("/"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "smollm2": reference, "rows": rows}, indent=2) + "\n")
    (out / "results.md").write_text(f"Command: `{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
