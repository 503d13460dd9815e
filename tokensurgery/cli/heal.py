"""`tokensurgery heal`: train a transplanted model back towards its base's quality."""

from __future__ import annotations

from pathlib import Path

import click

from . import options

LOSSES = ("alm", "lm", "kd", "alm+lm", "kd+lm", "alm+kd")  # = heal.LOSSES (a test checks); no torch import here
TRAINABLE = ("new", "new+bytes", "embeddings", "new+lora", "new+bytes+lora", "lora")  # = heal.TRAINABLE


@click.command("heal", cls=options.grouped(
    Teacher_and_loss=["teacher", "loss", "alm_temperature"],
    What_trains=["train", "lora_rank"],
    Data=["corpus", "mix"],
    Schedule=["steps", "max_minutes", "batch_size", "seq_len", "grad_accum", "lr"],
    Evaluation=["texts", "langs", "max_bytes"],
    Run=["resume", "force", "save_every", "seed", "device", "autocast", "json_out"]))
@click.argument("model")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--teacher", help="The transplant's BASE: the model the kd/alm losses distill, and what says which "
                                "rows are new (--train new..., the default included).")
@click.option("--loss", type=click.Choice(list(LOSSES)), default="lm", show_default=True,
              help="alm: match the teacher's likelihood of every chunk both tokenizations share; kd: match its "
                   "next-token distribution over the shared tokens where both contexts end at the same byte; lm: "
                   "plain next-token loss (no teacher); a+b: their sum.")
@click.option("--alm-temperature", default=1.0, show_default=True,
              help="ALM: chunk probabilities are compared as p^(1/T) (higher T weighs unlikely chunks more).")
@click.option("--train", type=click.Choice(list(TRAINABLE)), default="new+bytes+lora", show_default=True,
              help="new: only the rows of tokens the teacher lacks; new+bytes: also the rows of tokens the teacher "
                   "has only as byte-fallback tokens (<0xAB>); embeddings: every embedding row; +lora: plus LoRA "
                   "adapters on attention/MLP, merged into the weights on save (lora alone: every embedding row "
                   "plus adapters).")
@click.option("--lora-rank", default=8, show_default=True, help="Rank of the LoRA adapters (--train ...lora).")
@options.corpus_option(("bundled", "multilingual-train"))
@options.mix("source")
@options.steps(200)
@options.max_minutes
@options.batch_size(4)
@options.seq_len(256)
@click.option("--grad-accum", default=1, show_default=True, help="Micro-batches per optimizer step.")
@options.lr(3e-4)
@options.texts(default_max_bytes=2000)
@options.resume
@options.force
@click.option("--save-every", default=50, show_default=True, help="Checkpoint every N steps.")
@options.seed
@options.device
@click.option("--autocast", type=click.Choice(["auto", "bfloat16", "off"]), default="auto", show_default=True,
              help="Run the training step's matrix products in bfloat16 (weights stay float32). auto: where "
                   "that is fast (CUDA; CPUs with AVX512-BF16 or AMX), else off.")
@options.json_out
def heal(model: str, out: Path, teacher: str | None, loss: str, alm_temperature: float, train: str, lora_rank: int,
         corpus: tuple[str, ...], mix: str, steps: int, max_minutes: float | None, batch_size: int, seq_len: int,
         grad_accum: int, lr: float, texts: tuple[Path, ...], langs: tuple[str, ...], max_bytes: int | None,
         resume: bool, force: bool, save_every: int, seed: int, device: str, autocast: str,
         json_out: Path | None) -> None:
    """Train MODEL (e.g. a `transplant` output) so it recovers its base's quality; write it to OUT.

    With --max-minutes and no --steps the run lasts the time budget (learning rate on a cosine
    over the minutes). --teacher BASE says which rows are new; the kd/alm losses also distill BASE through its
    own tokenizer (the default, lm, measured better per minute: results/heal_light_train.md). The
    --text/--lang texts (default: none) are scored before and after (and by the teacher with
    a kd/alm loss); the figures go into OUT's model card and training.json. Runs under torchrun (DDP).
    """
    from ..corpus import Corpus
    from ..heal import HealConfig
    from ..heal import heal as heal_fn

    files = options.text_files(texts, langs)
    # --max-minutes without --steps: the run lasts the time budget and the learning rate's
    # cosine spans it (a step count would end it early, or stop it before the schedule's end)
    by_time = max_minutes is not None and click.get_current_context().get_parameter_source("steps").name == "DEFAULT"
    config = HealConfig(steps=10**9 if by_time else steps, lr_by_time=by_time, max_minutes=max_minutes,
                        batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum, lr=lr, loss=loss, train=train,
                        alm_temperature=alm_temperature, lora_rank=lora_rank, mix=mix, save_every=save_every, seed=seed, device=device,
                        autocast=autocast)
    config.check()
    res = heal_fn(model, out, Corpus.from_paths(list(corpus)), config, teacher=teacher, eval_files=files,
                  max_bytes=max_bytes, resume=resume, force=force)
    options.write_json(json_out, {"steps_done": res.steps_done, "seconds": res.seconds, "before": res.before,
                                  "after": res.after, "teacher": res.teacher})
    if str(json_out) == "-":
        return
    how = "stopped at the time limit" if res.stopped_early else "done"
    click.echo(f"{how}: {res.steps_done} steps in {res.seconds / 60:.1f} min; wrote {out}")
    if res.before:
        click.echo(f"{'text':<24} {'before':>8} {'after':>8} {'teacher':>8}")
        for name, b in res.before.items():
            t = res.teacher.get(name)
            click.echo(f"{name:<24} {b:8.4f} {res.after[name]:8.4f} {t if t is None else format(t, '8.4f')}")
