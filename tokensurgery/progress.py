"""Progress reporting: tqdm bars for loops, a one-line status for long single steps."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def bar(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, unit: str = "it") -> Iterator[T]:
    """A tqdm progress bar with ETA on stderr (a plain iterator when disabled)."""
    if not enabled:
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


@contextmanager
def status(message: str, enabled: bool = True):
    """Print `message ...` before a long step and its duration after it."""
    start = time.perf_counter()
    if enabled:
        print(f"{message} ...", file=sys.stderr, flush=True)
    yield
    if enabled:
        print(f"{message}: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
