"""`tokensurgery hypernet train|apply`: the hypernetwork's commands (registered by plugin.py)."""

from __future__ import annotations

from pathlib import Path

import click

from tokensurgery.cli import options

from .dynamic.merger import BOUNDARIES


@click.group("hypernet")
def hypernet_group() -> None:
    """Train a ZeTT hypernetwork for a base model; give the model any tokenizer with it.

    The hypernetwork predicts a token's embeddings from the pieces BASE's own tokenizer
    splits it into, so no model that uses the new tokenizer is needed.
    """


@hypernet_group.command("train", cls=options.grouped(
    Data=["corpus", "mix"],
    Schedule=["steps", "warmup_steps", "batch_size", "seq_len", "grad_accum", "lr", "max_minutes"],
    Sampled_tokenizers=["tokenizers", "vocab_size", "negatives", "noise", "max_reduction", "boundary", "objective",
                        "output_anchor", "whole_chars", "tail"],
    Hypernetwork=["init", "layers", "max_pieces", "residual", "output_head"],
    Run=["resume", "force", "save_every", "seed", "device"]))
@click.argument("base")
@click.argument("out", type=click.Path(path_type=Path))
@options.corpus
@options.mix("chars")
@options.steps(1000)
@click.option("--warmup-steps", type=int, default=None,
              help="Identity warm-up steps (reconstruct BASE's rows). Default: 0 with --residual (an untrained "
                   "residual hypernetwork reproduces them exactly already, so warm-up would change nothing), "
                   "100 with --no-residual.")
@options.batch_size(8)
@options.seq_len(128)
@click.option("--grad-accum", default=1, show_default=True, help="Micro-batches per optimizer step.")
@options.lr(3e-4)
@options.max_minutes
@click.option("--tokenizers", default="unigram", show_default=True, type=click.Choice(["unigram", "merges", "mixed"]),
              help="What the LM phase trains on: sampled unigram tokenizers (for transplants), batches merged over "
                   "themselves (for `tokensurgery dynamic`), or either per step.")
@click.option("--max-reduction", default=0.3, show_default=True,
              help="merges: each batch is merged to a random reduction up to this fraction fewer tokens.")
@options.boundary(BOUNDARIES, multiple=True)
@click.option("--objective", default="whole", show_default=True, type=click.Choice(["whole", "prefill", "both"]),
              help="merges: the loss of a merged batch: whole (every token, softmax over BASE's vocabulary plus the "
                   "new tokens: `dynamic score` mode B), prefill (a merged context, the rest in BASE's tokens and "
                   "scored: mode A) or both (one drawn per step).")
@click.option("--output-anchor", default=10.0, show_default=True,
              help="prefill steps: weight of the loss that holds the predicted output rows to the run's start (the "
                   "--init hypernetwork, else FVT), which mode B and generation use; 0: off.")
@options.whole_chars
@options.tail
@click.option("--vocab-size", default=32768, show_default=True, help="Size of each sampled unigram tokenizer.")
@click.option("--negatives", default=2048, show_default=True,
              help="Extra random tokens in each step's softmax besides the batch's own (-1: the whole sampled vocabulary).")
@click.option("--noise", default=1.0, show_default=True, help="Noise on the sampled tokenizers' log-count scores.")
@options.init
@click.option("--hypernet-layers", "layers", default=3, show_default=True,
              help="Transformer encoder layers of the hypernetwork (width = BASE's hidden size).")
@click.option("--max-pieces", default=8, show_default=True, help="BASE pieces kept per token.")
@click.option("--residual/--no-residual", default=True, show_default=True,
              help="Predict corrections to FVT (the mean of the pieces' rows) instead of whole rows.")
@click.option("--output-head/--no-output-head", default=True, show_default=True,
              help="Predict separate output embeddings (the patched model is untied).")
@options.resume
@options.force
@click.option("--save-every", default=100, show_default=True, help="Checkpoint every N steps.")
@options.seed
@options.device
def hypernet_train(base: str, out: Path, corpus: tuple[str, ...], mix: str, steps: int, warmup_steps: int | None, batch_size: int,
                   seq_len: int, grad_accum: int, lr: float, max_minutes: float | None, vocab_size: int, negatives: int,
                   noise: float, tokenizers: str, max_reduction: float, boundary: tuple[str, ...], objective: str,
                   output_anchor: float, whole_chars: bool, tail: int, init: Path | None, layers: int,
                   max_pieces: int, residual: bool, output_head: bool, resume: bool, force: bool, save_every: int,
                   seed: int, device: str) -> None:
    """Train a hypernetwork for BASE (frozen) and save it to OUT.

    Runs unchanged under torchrun (DDP; gloo on CPU, nccl on GPU), e.g.
    `torchrun --nproc_per_node 2 -m tokensurgery.cli hypernet train BASE OUT`.
    """
    from tokensurgery.corpus import Corpus

    from .train import TrainConfig, train

    if warmup_steps is None:
        warmup_steps = 0 if residual or init else 100
    config = TrainConfig(steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, seq_len=seq_len,
                         grad_accum=grad_accum, lr=lr, max_minutes=max_minutes, vocab_size=vocab_size,
                         negatives=negatives, noise=noise, tokenizers=tokenizers, max_reduction=max_reduction,
                         boundary=",".join(dict.fromkeys(boundary)) or TrainConfig.boundary, objective=objective,
                         output_anchor=output_anchor, whole_chars=whole_chars, tail=tail, mix=mix,
                         init=None if init is None else str(init), save_every=save_every, seed=seed, device=device)
    net_options = {"num_layers": layers, "max_pieces": max_pieces, "residual": residual, "predict_output": output_head}
    result = train(base, Corpus.from_paths(list(corpus)), out, config, net_options, resume=resume, force=force)
    last = next((h for h in reversed(result.history) if "lm" in h), result.history[-1] if result.history else {})
    how = "stopped at the time limit" if result.stopped_early else "done"
    click.echo(f"{how}: {result.steps_done} steps in {result.seconds:.0f}s; last loss "
               f"{last.get('loss', float('nan')):.4f}; saved {out}")


@hypernet_group.command("apply")
@click.argument("hypernet", type=click.Path(path_type=Path))
@click.argument("base")
@click.argument("tokenizer")
@click.argument("out", type=click.Path(path_type=Path))
@options.block_size(8192)
@click.option("--copy-shared/--predict-shared", default=True, show_default=True,
              help="Copy BASE's rows for tokens both tokenizers have, or predict those too.")
@options.device
@options.force
@options.texts(default_max_bytes=8000)
def hypernet_apply(hypernet: Path, base: str, tokenizer: str, out: Path, block_size: int, copy_shared: bool,
                   device: str, force: bool, texts: tuple[Path, ...], langs: tuple[str, ...], max_bytes: int) -> None:
    """Write BASE with TOKENIZER to OUT, embeddings predicted by HYPERNET.

    TOKENIZER is a model or tokenizer folder, a bundled alias, a tokenizer.json, a
    SentencePiece .model, a Tekken .json or a .tiktoken file (the last two are written as an
    equivalent Hugging Face tokenizer). --text/--lang score OUT afterwards.
    """
    from .apply import apply

    files = options.text_files(texts, langs)
    result = apply(hypernet, base, tokenizer, out, batch_size=block_size, device=device, copy_shared=copy_shared,
                   force=force)
    click.echo(f"wrote {out}: {result.rows:,} rows, {result.predicted:,} predicted, "
               f"{result.copied:,} copied, the rest mean rows ({result.seconds:.0f}s)")
    if files:
        from tokensurgery.evaluate import load_causal_lm, score_files

        model, tok = load_causal_lm(out)
        for score in score_files(model, tok, files, max_bytes=max_bytes):
            click.echo(f"{score.name:14s} bits/byte {score.bits_per_byte:.4f}  tokens/byte {score.tokens_per_byte:.4f}")
