"""`tokensurgery transplant`: give BASE the DONOR's tokenizer, no training."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TokenSurgeryError
from ..plugins import BUILTIN_METHODS, transplant_methods
from . import options


@click.command(cls=options.grouped(
    Method=["method", "k", "candidates", "ridge", "normalize", "affine", "fvt_above", "blend", "blend_error",
            "hypernet"],
    Compute=["solve_dtype", "device", "block_size"],
    Output_and_evaluation=["force", "texts", "langs", "max_bytes", "report", "json_out"]))
@click.argument("base")
@click.argument("donor")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--method", default="omp", show_default=True, type=options.LazyChoice(transplant_methods),
              help="How rows of tokens BASE lacks are computed (" + ", ".join(BUILTIN_METHODS[2:]) +
                   " and plugin methods need only the donor's tokenizer).")
@click.option("-k", "k", default=64, show_default=True, help="Shared tokens per new token (omp, knn).")
@click.option("--candidates", default="auto", show_default=True,
              help="OMP screening: atoms kept per token before the solve (auto: 128 to 1024, the more the fewer tokens "
                   "there are to solve; at least 2k); 'all' runs exact OMP (slow on big vocabularies).")
@click.option("--ridge", default=0.1, show_default=True,
              help="OMP: ridge on the refit, relative to the mean squared atom norm (0: plain OMP, whose coefficients "
                   "of nearly collinear atoms can explode).")
@click.option("--normalize/--no-normalize", default=False, show_default=True,
              help="OMP: pick atoms by correlation / norm.")
@click.option("--affine/--no-affine", default=True, show_default=True,
              help="OMP: fill the coefficients' shortfall from a sum of 1 with BASE's mean row, so dimensions that are "
                   "the same in every BASE row (they act as a bias in a tied output matrix) keep BASE's value.")
@click.option("--fvt-above", default="off", show_default=True,
              help="OMP: text tokens whose donor-space reconstruction error exceeds this get FVT instead; "
                   "'off' keeps OMP everywhere.")
@click.option("--blend/--no-blend", default=True, show_default=True,
              help="OMP: mix each new token's row with its FVT row, one weight per token class (fragments, words, "
                   "pieces, digits, ...) fit by leave-one-out on shared tokens; fragments get FVT, except those starting a "
                   "4-byte character (emoji), which keep OMP's own row.")
@click.option("--blend-error/--no-blend-error", default=True, show_default=True,
              help="OMP blend: within a class, a token's OMP weight is a line in its OMP reconstruction error (fit per "
                   "class by the same leave-one-out; tokens the donor explains badly usually lean to FVT); "
                   "--no-blend-error gives every token its class's one weight.")
@options.hypernet
@click.option("--solve-dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]),
              help="Precision of the solve (the output keeps BASE's dtype).")
@options.device
@options.block_size(1024)
@options.force
@options.texts(default_max_bytes=8000)
@click.option("--report", type=click.Path(path_type=Path), help="Write a PNG: reconstruction errors and bits per byte.")
@options.json_out
def transplant(base: str, donor: str, out: Path, method: str, k: int, candidates: str, ridge: float, normalize: bool,
               affine: bool, fvt_above: str, blend: bool, blend_error: bool, hypernet: Path | None, solve_dtype: str,
               device: str, block_size: int, force: bool,
               texts: tuple[Path, ...], langs: tuple[str, ...], max_bytes: int, report: Path | None,
               json_out: Path | None) -> None:
    """Give BASE the tokenizer of DONOR, without training; write the result to OUT.

    Tokens both tokenizers share keep BASE's embeddings; the others are computed by
    --method (default: OMP over the shared tokens in DONOR's embedding space). BASE accepts
    bundled aliases, .gguf files, local folders and hub ids; DONOR also a tokenizer folder,
    tokenizer.json, SentencePiece .model, Tekken .json or .tiktoken file (for methods that
    need no donor weights). --text/--lang score BASE and OUT on the same bytes afterwards.
    """
    from ..transplant import TransplantOptions, evaluate_transplant, transplant as run

    if candidates not in ("all", "auto") and not candidates.isdigit():
        raise TokenSurgeryError(f"--candidates must be a number, 'auto' or 'all', got {candidates!r}")
    n_candidates = None if candidates == "all" else candidates if candidates == "auto" else int(candidates)
    try:
        fvt_limit = None if fvt_above == "off" else float(fvt_above)
    except ValueError:
        raise TokenSurgeryError(f"--fvt-above must be a number or 'off', got {fvt_above!r}") from None
    if hypernet and method != "hypernet":
        raise TokenSurgeryError(f"--hypernet is used by --method hypernet, not --method {method}")
    opts = TransplantOptions(method=method, k=k, candidates=n_candidates, ridge=ridge,
                             normalize=normalize, affine=affine, fvt_above=fvt_limit, blend=blend, blend_error=blend_error,
                             dtype=solve_dtype, device=device,
                             block_size=block_size, hypernet=str(hypernet) if hypernet else None)
    files = options.text_files(texts, langs)
    result = run(base, donor, out, opts, force=force)
    s = result.summary()
    quiet = str(json_out) == "-"  # stdout holds only the JSON
    if not quiet:
        click.echo(f"wrote {out}: {s['rows']:,} rows = {s['shared']:,} shared + {s['specials']} specials copied, "
                   f"{s['filled']:,} by {method} ({s['seconds']:.0f}s)")
        if "rel_error_mean" in s:
            click.echo(f"reconstruction error in the donor space: mean {s['rel_error_mean']}, "
                       f"p10/p50/p90 {s['rel_error_p10_p50_p90']}")
        for name, w in result.blend_weights.items():
            from ..blend import describe

            click.echo(f"OMP weight per token class ({name}; the rest is FVT): {describe(w, result.blend_lines.get(name))}")
        click.echo(f"time: {result.phases.line()}")
        for note in result.notes:
            click.echo(f"note: {note}")
    scores = evaluate_transplant(result, files, max_bytes=max_bytes, progress=not quiet) if files else None
    options.write_json(json_out, {**s, "blend_weights": result.blend_weights,
                                  "blend_lines": result.blend_lines, "notes": result.notes,
                                  "bits_per_byte": {n: {"base": b, "transplanted": a} for n, (b, a) in (scores or {}).items()}})
    if report:
        from ..report import transplant_report

        transplant_report(result, scores, report)
    if quiet:
        return
    for name, (before, after) in (scores or {}).items():
        click.echo(f"{name:14s} bits/byte base {before:.4f} -> transplanted {after:.4f}")
    if report:
        click.echo(f"report: {report}")
