"""`tokensurgery bytes ...` (exact byte-level probabilities of a tokenized model) and
`tokensurgery byte-model ...` (byte models trained here); registered by plugin.py."""

from __future__ import annotations

from pathlib import Path

import click

from tokensurgery.cli import options
from tokensurgery.errors import TokenSurgeryError

_ESCAPES = click.option("--escapes", is_flag=True,
                        help=r"Read \n, \t and \xNN in the prompt (any byte, even invalid UTF-8).")


def _prompt_bytes(text: str, escapes: bool) -> bytes:
    if not escapes:
        return text.encode("utf-8")
    import codecs

    try:
        return codecs.escape_decode(text.encode("utf-8"))[0]
    except ValueError as e:
        raise TokenSurgeryError(f"bad escape sequence in {text!r}: {e}") from None


def _joined(prompt: bytes, new: bytes) -> str:
    """Prompt and continuation as text, the new part in bold; a character the prompt ends
    inside is decoded whole, with the new part."""
    from .exact.canonical import unfinished_character

    head = prompt[: len(prompt) - len(unfinished_character(prompt))]
    return head.decode("utf-8", "replace") + click.style((prompt[len(head):] + new).decode("utf-8", "replace"), bold=True)


def _byte_lms(specs: tuple[str, ...], dtype: str, device: str):
    from tokensurgery.progress import status

    from .exact import ByteLM

    out = []
    for spec in specs:
        with status(f"loading {spec} as a byte-level model"):
            out.append(ByteLM.from_pretrained(spec, dtype=dtype, device=device))
    return out


# ---- exact byte-level probabilities ---------------------------------------------------------

@click.group("bytes")
def bytes_group() -> None:
    """Exact byte-level probabilities from a tokenized model: score, sample, inspect.

    MODEL is a bundled alias (smollm2-135m, gemma3-270m), a local folder, a .gguf file or a hub id."""


@bytes_group.command("score")
@click.argument("models", nargs=-1, required=True)
@options.texts(default_max_bytes=2000)
@click.option("--mode", default="mix", show_default=True, type=click.Choice(["mix", "product"]),
              help="How several MODELS are combined per byte.")
@click.option("--weights", help="Comma-separated ensemble weights, one per model (default: equal; needs 2+ models).")
@options.dtype()
@options.device
@options.json_out
def bytes_score(models, texts, langs, max_bytes, mode, weights, dtype, device, json_out) -> None:
    """Byte-level bits per byte of one model, or of several combined (ensemble)."""
    import time

    from tokensurgery.evaluate import read_text_file

    from .exact import ensemble

    files = options.text_files(texts, langs, required=True)
    w = None
    if weights:
        if len(models) < 2:
            raise TokenSurgeryError("--weights combines several models; give two or more MODELS")
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise TokenSurgeryError(f"--weights must be comma-separated numbers, got {weights!r}") from None
        if len(w) != len(models):
            raise TokenSurgeryError(f"--weights has {len(w)} numbers for {len(models)} models")
    lms = _byte_lms(models, dtype, device)
    scorers = list(zip(models, lms))
    if len(lms) > 1:
        scorers.append((f"{mode}({', '.join(models)})", ensemble(lms, mode, w)))
    rows = []
    for f in files:
        text = read_text_file(f, max_bytes)
        for name, scorer in scorers:
            start = time.time()
            result = scorer.score(text)
            rows.append({"text": Path(f).name, "model": name, "bytes": len(result.logprobs),
                         "bits_per_byte": result.bits_per_byte, "seconds": time.time() - start})
            if str(json_out) != "-":
                click.echo(f"{Path(f).name:16s} {options.short(name):24s} {rows[-1]['bytes']:7,d} bytes  "
                           f"{result.bits_per_byte:.4f} bits/byte  ({rows[-1]['seconds']:.1f}s)")
    options.write_json(json_out, {"max_bytes": max_bytes, "mode": mode, "weights": w, "results": rows})


@bytes_group.command("generate")
@click.argument("model")
@click.argument("prompt")
@options.max_new_bytes(128)
@options.temperature
@click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0 = all).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--stop", "stops", multiple=True, help="Stop at this string; repeatable.")
@click.option("--per-byte", is_flag=True,
              help="Sample (or, at temperature 0, take the most likely) byte by byte from the exact next-byte "
                   "distribution instead of token by token; slower, and --top-k/--top-p do not apply.")
@options.seed
@_ESCAPES
@options.dtype()
@options.device
def bytes_generate(model, prompt, max_new_bytes, temperature, top_k, top_p, stops, per_byte, seed, escapes, dtype,
                   device) -> None:
    """Continue PROMPT, which may end in the middle of a word or character: its end is
    resolved exactly, then tokens are sampled as usual (--per-byte: bytes)."""
    if per_byte and (top_k or top_p < 1.0):
        raise TokenSurgeryError("--top-k/--top-p act on tokens; they do not apply with --per-byte")
    (lm,) = _byte_lms((model,), dtype, device)
    data = _prompt_bytes(prompt, escapes)
    if per_byte:
        out = lm.generate_bytes(data, max_new_bytes=max_new_bytes, temperature=temperature, stop=stops, seed=seed,
                                as_bytes=True)
    else:
        out = lm.generate(data, max_new_bytes=max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                          stop=stops, seed=seed, as_bytes=True)
    click.echo(_joined(data, out))


@bytes_group.command("next")
@click.argument("model")
@click.argument("prefix")
@click.option("--top", default=10, show_default=True, help="How many bytes to list.")
@_ESCAPES
@options.dtype()
@options.device
def bytes_next(model, prefix, top, escapes, dtype, device) -> None:
    """The exact distribution of the byte after PREFIX (most likely first)."""
    import numpy as np

    (lm,) = _byte_lms((model,), dtype, device)
    lp = lm.next_byte_logprobs(_prompt_bytes(prefix, escapes))
    for i in np.argsort(-lp)[:top]:
        label = "EOS" if i == 256 else repr(bytes([i]))
        click.echo(f"{label:8s} {np.exp(lp[i]):.6f}")


# ---- byte models trained here -----------------------------------------------------------------

@click.group("byte-model")
def byte_model_group() -> None:
    """Train, run and score byte-level models: hierarchical (Byte2Word encoder, word backbone,
    byte decoder) or a flat byte transformer, from scratch or retrofitted onto a subword model."""


@byte_model_group.command("train", cls=options.grouped(
    Model=["kind", "subword", "stage", "init", "unfreeze_backbone", "bf16_context", "d_model", "layers", "d_byte",
           "decoder_layers", "delete_gate", "gate_alpha"],
    Schedule=["corpus", "steps", "batch_size", "context_bytes", "lr", "max_minutes", "lr_by_time"],
    Run=["resume", "force", "seed", "device"]))
@click.argument("kind", type=click.Choice(["hierarchical", "flat"]))
@click.argument("out", type=click.Path(path_type=Path))
@options.corpus
@click.option("--from-subword", "subword", help="Retrofit: use this subword model's transformer as the word "
              "backbone (frozen; hierarchical only), e.g. smollm2-135m.")
@click.option("--stage", type=click.Choice(["all", "distill", "decoder"]), default="all", show_default=True,
              help="Retrofit stages: distill = the byte encoder learns the subword model's word embeddings (no "
              "backbone); decoder = the byte decoder alone learns from the frozen encoder+backbone; all = "
              "next-byte + distillation losses. Continue a saved model with --init.")
@options.init
@click.option("--unfreeze-backbone", is_flag=True, help="Retrofit: train the pretrained backbone too.")
@click.option("--bf16-context", is_flag=True, help="Stage decoder: run the frozen encoder + backbone under bfloat16 "
              "autocast (about 1.6x faster steps on a CPU with bf16 support).")
@click.option("--d-model", default=256, show_default=True, help="Backbone width (from scratch).")
@click.option("--layers", default=4, show_default=True, help="Backbone layers (from scratch).")
@click.option("--d-byte", default=128, show_default=True, help="Byte encoder/decoder width (hierarchical).")
@click.option("--decoder-layers", default=2, show_default=True, help="Byte decoder layers (hierarchical).")
@click.option("--delete-gate", type=int, default=None,
              help="Flat: an MrT5 delete gate after this many backbone layers (default: no gate).")
@click.option("--gate-alpha", default=0.1, show_default=True,
              help="Flat with --delete-gate: reward for deleting (nats per byte at 100% deletion).")
@options.steps(1000)
@options.batch_size(8)
@click.option("--context-bytes", default=512, show_default=True, help="Bytes per training window.")
@options.lr(1e-3)
@options.max_minutes
@click.option("--lr-by-time", is_flag=True, help="With --max-minutes: the cosine schedule spans the time budget "
              "instead of --steps (a resumed run then does not repeat exactly).")
@options.resume
@options.force
@options.seed
@options.device
def byte_model_train(kind: str, out: Path, corpus: tuple[str, ...], subword: str | None, stage: str, init: Path | None,
                     unfreeze_backbone: bool, bf16_context: bool, d_model: int, layers: int, d_byte: int,
                     decoder_layers: int, delete_gate: int | None, gate_alpha: float, steps: int, batch_size: int,
                     context_bytes: int, lr: float, max_minutes: float | None, lr_by_time: bool, resume: bool,
                     force: bool, seed: int, device: str) -> None:
    """Train a KIND byte model on text and save it to OUT (runs unchanged under torchrun)."""
    import torch

    from tokensurgery.corpus import Corpus

    from .trainable.flat import FlatByteLM, FlatConfig
    from .trainable.hierarchical import HierarchicalConfig, HierarchicalLM, llama_backbone
    from .trainable.train import ByteTrainConfig, train_bytes

    if (subword or init or stage != "all") and kind != "hierarchical":
        raise TokenSurgeryError("--from-subword, --init and --stage are for hierarchical models only")
    if delete_gate is not None and kind != "flat":
        raise TokenSurgeryError("--delete-gate is for flat models only")
    if delete_gate is not None and not 0 < delete_gate < layers:
        raise TokenSurgeryError(f"--delete-gate must be between 1 and --layers - 1 ({layers - 1}), got {delete_gate}")
    if subword and init:
        raise TokenSurgeryError("give --from-subword (a new retrofit) or --init (a saved model), not both")
    if init and out.resolve() == init.resolve():
        raise TokenSurgeryError("--init and OUT are the same folder; write the next stage to a new OUT")
    data = Corpus.from_paths(list(corpus))
    backbone = llama_backbone(layers, d_model)
    torch.manual_seed(seed)
    model = None
    if not resume:
        if kind == "flat":
            model = FlatByteLM(FlatConfig(d_model=d_model, backbone=backbone, gate_layer=delete_gate,
                                          gate_alpha=gate_alpha))
        elif init:
            model = HierarchicalLM.from_pretrained(init)
        elif subword:
            model = HierarchicalLM.from_subword(subword, HierarchicalConfig(d_byte=d_byte, decoder_layers=decoder_layers))
        else:
            model = HierarchicalLM(HierarchicalConfig(d_byte=d_byte, d_model=d_model, decoder_layers=decoder_layers,
                                                      backbone=backbone))
        if unfreeze_backbone:
            for p in model.parameters():
                p.requires_grad_(True)
    config = ByteTrainConfig(steps=steps, batch_size=batch_size, context_bytes=context_bytes, lr=lr,
                             max_minutes=max_minutes, lr_by_time=lr_by_time, stage=stage,
                             bf16_context=bf16_context, seed=seed, device=device)
    result = train_bytes(model, data, out, config, resume=resume, force=force)
    last = result.history[-1]["loss"] if result.history else float("nan")
    click.echo(f"{'stopped at the time limit' if result.stopped_early else 'done'}: {result.steps_done} steps in "
               f"{result.seconds:.0f}s; last loss {last:.4f} nats per symbol; saved {out}")


@byte_model_group.command("generate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("prompt")
@options.max_new_bytes(64)
@options.temperature
@options.seed
@_ESCAPES
def byte_model_generate(model: Path, prompt: str, max_new_bytes: int, temperature: float, seed: int,
                        escapes: bool) -> None:
    """Continue PROMPT with a saved byte model, byte by byte."""
    from .trainable.train import load_byte_model

    net = load_byte_model(model).eval()
    data = _prompt_bytes(prompt, escapes)
    out = net.generate(data, max_new_bytes=max_new_bytes, temperature=temperature, seed=seed)
    click.echo(_joined(data, out))


@byte_model_group.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@options.texts(default_max_bytes=None)
@options.window(None)
@options.json_out
def byte_model_eval(model: Path, texts, langs, max_bytes, window, json_out) -> None:
    """Bits per byte of a saved byte model on text files (non-overlapping windows)."""
    from tokensurgery.evaluate import read_text_file

    from .trainable.score import score_bytes
    from .trainable.train import load_byte_model

    files = options.text_files(texts, langs, required=True)
    net = load_byte_model(model).eval()
    rows = []
    for f in files:
        data = read_text_file(f, max_bytes).encode("utf-8")
        score = score_bytes(net, data, window)
        rows.append({"text": Path(f).name, "bytes": score.n_bytes, "bits_per_byte": score.bits_per_byte,
                     "positions_per_byte": score.positions_per_byte})
        if str(json_out) != "-":
            click.echo(f"{Path(f).name:16s} {score.n_bytes:9,d} bytes  {score.bits_per_byte:.4f} bits/byte  "
                       f"{score.positions_per_byte:.3f} positions/byte")
    options.write_json(json_out, {"model": str(model), "window": window, "max_bytes": max_bytes, "results": rows})
