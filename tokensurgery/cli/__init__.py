"""The `tokensurgery` command line: thin click wrappers over the library functions.

One module per command group: `models.py` (models, import), `inspect_vocab.py` (inspect),
`evaluate.py` (eval), `transplant.py` (transplant), `heal.py` (heal); plugins add theirs (`hypernet` from
`hypernets/cli.py`; `bytes` and `byte-model` from `byte_models/cli.py`) through
`tokensurgery.plugins`. Options shared across commands come from `options.py`.
"""

from __future__ import annotations

import click

from ..errors import TokenSurgeryError


class _Group(click.Group):
    """Turns library errors into one line on stderr and exit code 2 (traceback with --debug);
    adds the plugins' commands when commands are first looked up (a plugin may be loaded
    while this module is still being imported)."""

    def _with_plugins(self) -> None:
        from ..plugins import COMMANDS, load_plugins

        load_plugins()
        for command in COMMANDS:
            if command.name not in self.commands:
                self.add_command(command)

    def list_commands(self, ctx):
        self._with_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._with_plugins()
        return super().get_command(ctx, name)

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
                click.echo("error: out of memory; try --dtype bfloat16 or a smaller --batch-size / --block-size", err=True)
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


def _add_commands() -> None:
    from .evaluate import eval_
    from .heal import heal
    from .inspect_vocab import inspect
    from .models import import_, models
    from .transplant import transplant

    for command in (models, import_, inspect, eval_, transplant, heal):
        cli.add_command(command)


_add_commands()


def main() -> None:
    cli(prog_name="tokensurgery")
