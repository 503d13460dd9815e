"""Options shared by the CLI's commands: one name, one meaning, one help text each.

Every command that takes one of these options takes it from here, so `--max-bytes` or
`--dtype` cannot drift apart between commands (the README's option table lists them, and a
test reads every command's `--help` against it). Also: the grouped-help command class and the
small helpers commands share (reading text inputs, printing results, writing JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from ..errors import TokenSurgeryError

LANG_HELP = ("Bundled text: Gutenberg excerpt by language (en, de, fr, it, nl, la, zh), py (Python stdlib "
             "code), multilingual (13 script groups, one file each; multilingual-dev: their tuning half) or one "
             "group (cyrillic, thai, emoji, ...); repeatable.")

# name -> (help text, the decorator). `SHARED` is what the README table and the help test read.
SHARED: dict[str, str] = {}


def _shared(name: str, *decls, **kwargs) -> Callable:
    SHARED[name] = kwargs["help"]
    return click.option(name, *decls, **kwargs)


def texts(default_max_bytes: int | None) -> Callable:
    """--text FILE, --lang CODE (both repeatable) and --max-bytes N: the texts a command scores."""
    def deco(f):
        f = _shared("--max-bytes", type=int, default=default_max_bytes, show_default=True,
                    help="Score only the first N bytes of each text (whole characters; no limit if unset).")(f)
        f = _shared("--lang", "--eval-lang", "langs", multiple=True, help=LANG_HELP)(f)
        f = _shared("--text", "--eval", "texts", multiple=True, type=click.Path(path_type=Path),
                    help="UTF-8 text file to score; repeatable.")(f)
        return f
    return deco


def json_out(f):
    return _shared("--json", "json_out", type=click.Path(path_type=Path, allow_dash=True),
                   help="Also write the results as JSON to this file ('-' prints them instead of the table).")(f)


def dtype(default: str = "float32", choices=("float32", "bfloat16", "float16", "float64")) -> Callable:
    return _shared("--dtype", default=default, show_default=True, type=click.Choice(list(choices)),
                   help="Precision the model runs in.")


def device(f):
    return _shared("--device", default="cpu", show_default=True,
                   help="Where the work runs: cpu, cuda, cuda:1, mps.")(f)


def seed(f):
    return _shared("--seed", type=int, default=0, show_default=True, help="Random seed (runs repeat exactly).")(f)


def force(f):
    return _shared("--force", is_flag=True, help="Replace the output folder if it exists.")(f)


def resume(f):
    return _shared("--resume", is_flag=True, help="Continue the run in OUT from its last checkpoint.")(f)


def max_minutes(f):
    return _shared("--max-minutes", type=float,
                   help="Stop after this much wall-clock time (checkpointed; --resume goes on).")(f)


def corpus_option(default: tuple[str, ...] = ("bundled",)) -> Callable:
    return _shared("--corpus", multiple=True, default=default, show_default=True,
                   help="Text file or folder to train on (repeatable); "
                        "'bundled' = music21's Gutenberg excerpts and Python stdlib modules, minus the held-out "
                        "text the benchmarks score; 'multilingual-dev' = the tuning half of the multilingual set; "
                        "'multilingual-train' = its training part (up to 24 KB per script group, no line of either half).")


corpus = corpus_option()


def init(f):
    return _shared("--init", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                   help="Start from the model saved in this folder (what this command trains, e.g. an earlier run's "
                        "OUT) instead of new weights; its architecture replaces the options that set one; optimizer "
                        "and schedule start fresh.")(f)


def mix(default: str) -> Callable:
    return _shared("--mix", type=click.Choice(["chars", "source"]), default=default, show_default=True,
                   help="How training windows are drawn: texts in proportion to their length, or each corpus source "
                        "(music21, stdlib, multilingual-train, each file given) equally often.")


def batch_size(default: int) -> Callable:
    return _shared("--batch-size", default=default, show_default=True,
                   help="Sequences per batch (training: per micro-batch; dynamic: texts merged together).")


def boundary(choices: tuple[str, ...], multiple: bool = False) -> Callable:
    """`choices` come from the merger (a plugin), which the core does not import."""
    return _shared("--boundary", "boundary", type=click.Choice(choices), multiple=multiple,
                   default=() if multiple else "pretokens", show_default=not multiple,
                   help="What merges never cross: BASE's pre-tokens (SentencePiece tokenizers: words), words, "
                        "sentences (default: pretokens). hypernet train takes it more than once and draws one per step.")


def merge_budget(f):
    """--merges N and --reduction P: how far dynamic merging goes."""
    f = _shared("--reduction", type=float,
                help="Merge until each batch of texts (dynamic generate: the prompt) has this fraction fewer tokens, "
                     "e.g. 0.12 (with --merges: whichever comes first).")(f)
    return _shared("--merges", type=int,
                   help="Merges per batch of texts (dynamic generate: of the prompt); default: none, unless "
                        "--reduction is given.")(f)


def whole_chars(f):
    return _shared("--whole-chars", is_flag=True,
                   help="Merges never touch a token that is part of a UTF-8 character (a byte-level tokenizer's "
                        "pieces of CJK, Thai, Indic or emoji characters): new tokens are whole characters.")(f)


def tail(f):
    return _shared("--tail", default=0, show_default=True, type=click.IntRange(min=0),
                   help="The last N segments of each prompt (dynamic score: of each mode-A context; hypernet train: "
                        "of each prefill step's context) stay in the model's own tokens, where decoding goes on "
                        "from; they count towards --reduction, so the rest merges more.")(f)


def hypernet(f):
    return _shared("--hypernet", type=click.Path(path_type=Path),
                   help="A hypernetwork trained for BASE (`tokensurgery hypernet train`): rows for transplant "
                        "--method hypernet and for dynamic merging's new tokens (dynamic without one: FVT rows).")(f)


def seq_len(default: int) -> Callable:
    return _shared("--seq-len", default=default, show_default=True,
                   help="Tokens per training sequence (of the tokenizer being trained; heal: of each tokenizer).")


def block_size(default: int) -> Callable:
    return _shared("--block-size", default=default, show_default=True,
                   help="Tokens computed per block (bounds memory).")


def max_new_bytes(default: int) -> Callable:
    return _shared("--max-new-bytes", default=default, show_default=True, help="Stop after this many new bytes.")


def lr(default: float) -> Callable:
    return _shared("--lr", default=default, show_default=True,
                   help="Peak AdamW learning rate (linear warm-up, then cosine to 10%).")


def steps(default: int) -> Callable:
    return _shared("--steps", default=default, show_default=True,
                   help="Optimizer steps to train (after any --warmup-steps).")


def window(default: int | None) -> Callable:
    return _shared("--window", type=int, default=default, show_default=default is not None,
                   help="Model positions per scoring window: tokens; for byte models words (hierarchical, "
                        "default 128) or bytes (flat, default 512).")


def temperature(f):
    return _shared("--temperature", default=0.8, show_default=True, help="Sampling temperature (0 = greedy).")(f)


class LazyChoice(click.Choice):
    """A choice whose list is read when used (plugins may register more after import)."""

    def __init__(self, get_choices: Callable[[], tuple[str, ...]]):
        self._get_choices = get_choices
        super().__init__(())

    choices = property(lambda self: tuple(self._get_choices()), lambda self, value: None)


class GroupedCommand(click.Command):
    """Shows options under headings; `groups` maps a heading to option names."""

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


def grouped(**groups: list[str]) -> type[GroupedCommand]:
    """A GroupedCommand class with these headings (keyword = heading, underscores as spaces)."""
    return type("Grouped", (GroupedCommand,), {"groups": {k.replace("_", " "): v for k, v in groups.items()}})


def text_files(texts: tuple[Path, ...], langs: tuple[str, ...], required: bool = False) -> list[Path]:
    """Text files and bundled texts, each checked readable before any long work starts."""
    from ..assets import text_paths
    from ..evaluate import read_text_file

    files = list(texts) + [p for lang in langs for p in text_paths(lang)]
    if required and not files:
        raise TokenSurgeryError("give at least one --text FILE or --lang CODE")
    for f in files:
        read_text_file(f, 1)  # fail before the long work, not after
    return files


def write_json(path: Path | None, payload) -> None:
    """`--json`: write the payload to PATH, or print it for '-'."""
    if path is None:
        return
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    if str(path) == "-":
        click.echo(text)
    else:
        Path(path).write_text(text + "\n", encoding="utf-8")


def short(spec: str, width: int = 24) -> str:
    return spec if len(spec) <= width else "…" + spec[-(width - 1):]
