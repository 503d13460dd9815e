"""Flat byte transformer vs hierarchical byte model vs subword model, trained from scratch for
the same wall-clock time each on this machine, one after another (never side by side).

flat, hierarchical and subword have the same backbone (a Llama of --d-model width and
--layers layers); the subword model reads SmolLM2's tokenizer. hierarchical-big spends the
compute its 4-5x shorter backbone sequence saves on a bigger backbone (--big-*); flat-gate is
the flat model with a MrT5 delete gate after its first layer. Reported per model: held-out bits per byte on the
first --eval-bytes bytes of the en/de/fr excerpts and argparse.py (the bundled training
corpus leaves them out), the same on noisy copies (each letter swapped with its neighbour
or case-flipped with probability --noise), and the backbone sequence length per byte.

Run: .venv/bin/python benchmarks/byte_models.py --minutes 20 --out results/byte_models
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tokensurgery.assets import corpus_path
from tokensurgery.inputs import open_model, vocabulary_of_folder
from tokensurgery.byte_models.trainable.score import score_bytes
from tokensurgery.byte_models.trainable.flat import FlatByteLM, FlatConfig
from tokensurgery.byte_models.trainable.hierarchical import HierarchicalConfig, HierarchicalLM, llama_backbone
from tokensurgery.byte_models.trainable.train import ByteTrainConfig, train_bytes
from tokensurgery.evaluate import read_text_file, score_text
from tokensurgery.hypernets import bundled_corpus


class SubwordLM(torch.nn.Module):
    """A Llama on SmolLM2's tokenizer with the same backbone as the byte models."""

    def __init__(self, backbone: dict, d_model: int):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.vocab = vocabulary_of_folder(open_model("smollm2-135m"))
        self.lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(self.vocab), hidden_size=d_model,
                                               max_position_embeddings=4096, tie_word_embeddings=True, **backbone))

    def ids(self, text: bytes) -> list[int]:
        return [0] + self.vocab.encode(text.decode("utf-8", "ignore"))  # <|endoftext|> starts a document

    def text_loss(self, texts: list[bytes]):
        seqs = [self.ids(t) for t in texts]
        width = min(map(len, seqs))
        x = torch.tensor([s[:width] for s in seqs])
        logits = self.lm(input_ids=x[:, :-1]).logits
        n_bytes = sum(len(self.vocab.decode_bytes(s[1:width])) for s in seqs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)), n_bytes

    def save_pretrained(self, folder):
        self.lm.save_pretrained(folder)


def noisy(text: str, p: float, seed: int = 0) -> str:
    """Swap a letter with the next character or flip its case, each with probability p/2."""
    rng = random.Random(seed)
    chars = list(text)
    i = 0
    while i < len(chars):
        if chars[i].isalpha():
            r = rng.random()
            if r < p / 2 and i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
                i += 1
            elif r < p:
                chars[i] = chars[i].swapcase()
        i += 1
    return "".join(chars)


@torch.no_grad()
def bits_per_byte(model, text: str, window: int) -> tuple[float, float]:
    """(bits per byte, backbone positions per byte) over non-overlapping windows of the text."""
    if isinstance(model, (HierarchicalLM, FlatByteLM)):
        score = score_bytes(model, text.encode(), window)
        return score.bits_per_byte, score.positions_per_byte
    model.eval()
    vocab = copy.copy(model.vocab)
    vocab.bos_added = 0  # the subword model was trained with token 0 in front of every window
    score = score_text(model.lm, vocab, text, window=window, stride=window, progress=False)
    return score.bits_per_byte, score.tokens_per_byte


def build(kind: str, args):
    """(model, evaluation window) for a model name; see --models."""
    backbone = llama_backbone(args.layers, args.d_model)
    if kind == "flat":
        return FlatByteLM(FlatConfig(d_model=args.d_model, backbone=backbone)), 512
    if kind == "flat-gate":
        return FlatByteLM(FlatConfig(d_model=args.d_model, backbone=backbone, gate_layer=1, gate_alpha=args.gate_alpha)), 512
    if kind == "hierarchical":
        return HierarchicalLM(HierarchicalConfig(d_model=args.d_model, backbone=backbone)), 128
    if kind == "hierarchical-big":
        return HierarchicalLM(HierarchicalConfig(d_byte=args.big_d_byte, d_model=args.big_d_model,
                                                 backbone=llama_backbone(args.big_layers, args.big_d_model))), 128
    if kind == "subword":
        return SubwordLM(backbone, args.d_model), 128
    raise SystemExit(f"unknown model {kind!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock per model")
    ap.add_argument("--models", default="flat,hierarchical,subword",
                    help="comma-separated: flat, flat-gate (MrT5 delete gate), hierarchical (same backbone), "
                         "hierarchical-big (the --big-* backbone), subword")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--big-d-model", type=int, default=384)
    ap.add_argument("--big-layers", type=int, default=6)
    ap.add_argument("--big-d-byte", type=int, default=128)
    ap.add_argument("--gate-alpha", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--context-bytes", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--eval-bytes", type=int, default=6000)
    ap.add_argument("--langs", default="en,de,fr,py")
    ap.add_argument("--append", action="store_true", help="add to (or replace rows of) the results already in --out")
    ap.add_argument("--out", type=Path, default=Path("results/byte_models"))
    args = ap.parse_args()
    command = "python " + " ".join(sys.argv)
    print("command:", command, flush=True)
    corpus = bundled_corpus()
    texts = {lang: read_text_file(corpus_path(lang), args.eval_bytes) for lang in args.langs.split(",")}
    rows = []
    if args.append and (args.out / "results.json").exists():
        rows = json.loads((args.out / "results.json").read_text())["rows"]
    for kind in args.models.split(","):
        torch.manual_seed(0)
        model, window = build(kind, args)
        n_params = sum(p.numel() for p in model.parameters())
        cfg = ByteTrainConfig(steps=100_000, batch_size=args.batch_size, context_bytes=args.context_bytes, lr=args.lr,
                              lr_warmup=50, max_minutes=args.minutes, lr_by_time=True, save_every=10**9)
        start = time.perf_counter()
        result = train_bytes(model, corpus, args.out / kind, cfg, force=True)
        seconds = time.perf_counter() - start
        row = {"model": kind, "params": n_params, "steps": result.steps_done, "train_seconds": round(seconds, 1),
               "minutes": args.minutes, "command": command}
        for lang, text in texts.items():
            bpb, pos = bits_per_byte(model, text, window)
            noisy_bpb, _ = bits_per_byte(model, noisy(text, args.noise), window)
            row[lang] = {"bpb": bpb, "noisy_bpb": noisy_bpb, "positions_per_byte": pos}
        rows = [r for r in rows if r["model"] != kind] + [row]
        print(json.dumps(row), flush=True)
    langs = list(texts)
    lines = [f"Training wall-clock per model as listed, on this machine (2-core CPU), one model at a time; held-out "
             f"first {args.eval_bytes} bytes; noise {args.noise} (bits per byte on the noisy copy in brackets).", "",
             "| model | params | minutes | steps | " + " | ".join(f"{l} bpb (noisy)" for l in langs)
             + " | backbone positions/byte |",
             "|---|---|---|---|" + "---|" * (len(langs) + 1)]
    for r in rows:
        pos = sum(r[l]["positions_per_byte"] for l in langs) / len(langs)
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r.get('minutes', '')} | {r['steps']} | "
                     + " | ".join(f"{r[l]['bpb']:.3f} ({r[l]['noisy_bpb']:.3f})" for l in langs) + f" | {pos:.3f} |")
    commands = sorted({r.get("command", command) for r in rows})
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"commands": commands, "threads": torch.get_num_threads(), "torch": torch.__version__}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "results.md").write_text("Commands:\n" + "".join(f"- `{c}`\n" for c in commands) + f"\n{table}\n")


if __name__ == "__main__":
    main()
