"""Plugins: what the hypernetwork and byte-model packages add to the core, found at run time.

The core never imports a plugin. A plugin names a `register()` function under the
`tokensurgery.plugins` entry-point group (pyproject.toml); `load_plugins()` calls each one,
and each registers its transplant fill methods (`register_fill_method`) and its CLI
commands (`register_command`). Not handled: ordering between plugins (names must not clash).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from .errors import TokenSurgeryError


@dataclass(frozen=True)
class FillMethod:
    """A transplant method from a plugin. `rows(base_embeddings, vocab_map, filled_ids, options,
    progress)` returns {"input": rows, "output": rows (optional)} for the filled donor ids;
    `check(options)` raises a clear error before any long work when options are missing."""

    name: str
    rows: Callable
    help: str
    check: Callable | None = None


FILL_METHODS: dict[str, FillMethod] = {}
COMMANDS: list = []  # click commands and groups, added to the `tokensurgery` CLI
_loaded = False


def register_fill_method(method: FillMethod) -> None:
    if method.name in FILL_METHODS and FILL_METHODS[method.name] is not method:
        raise TokenSurgeryError(f"two plugins register the transplant method {method.name!r}")
    FILL_METHODS[method.name] = method


def register_command(command) -> None:
    if all(c is not command for c in COMMANDS):
        COMMANDS.append(command)


BUILTIN_METHODS = ("omp", "knn", "fvt", "mean", "zero")  # transplant.py implements these


def transplant_methods() -> tuple[str, ...]:
    """Every transplant method: the built-in ones, then those plugins register."""
    load_plugins()
    return BUILTIN_METHODS + tuple(sorted(FILL_METHODS))


def load_plugins() -> None:
    """Call every installed plugin's `register()` once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in sorted(entry_points(group="tokensurgery.plugins"), key=lambda e: e.name):
        ep.load()()
