"""`tokensurgery eval`: bits per byte of one model, or two side by side on the same bytes."""

from __future__ import annotations

from pathlib import Path

import click

from . import options


@click.command("eval")
@click.argument("model")
@options.texts(default_max_bytes=None)
@click.option("--compare", "other", help="A second model scored on the same bytes, shown side by side.")
@options.window(256)
@click.option("--stride", default=128, show_default=True, help="Tokens a window advances (window - stride = context).")
@options.dtype()
@options.device
@options.json_out
def eval_(model: str, texts: tuple[Path, ...], langs: tuple[str, ...], max_bytes: int | None, other: str | None,
          window: int, stride: int, dtype: str, device: str, json_out: Path | None) -> None:
    """Bits per byte (and tokens per byte) of MODEL on text files."""
    from ..evaluate import load_causal_lm, score_files
    from ..inputs import open_model
    from ..progress import status

    files = options.text_files(texts, langs, required=True)
    results = {}
    for spec in [model] + ([other] if other else []):
        folder = open_model(spec)
        with status(f"loading {spec}"):
            lm, tok = load_causal_lm(folder, dtype=dtype, device=device)
        results[spec] = score_files(lm, tok, files, window=window, stride=stride, max_bytes=max_bytes)
        del lm
    payload = {"window": window, "stride": stride, "max_bytes": max_bytes,
               "results": {s: [r.as_dict() for r in rs] for s, rs in results.items()}}
    options.write_json(json_out, payload)
    if str(json_out) == "-":
        return
    specs = list(results)
    header = f"{'text':14s} {'bytes':>9s}" + "".join(f" | {options.short(s):>24s} bpb   tok/B" for s in specs)
    click.echo(header)
    click.echo("-" * len(header))
    for row in range(len(files) + 1):
        first = results[specs[0]][row]
        line = f"{first.name:14s} {first.n_bytes:9,d}"
        for s in specs:
            r = results[s][row]
            line += f" | {r.bits_per_byte:28.4f} {r.tokens_per_byte:7.4f}"
        click.echo(line)
