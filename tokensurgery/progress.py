"""Progress reporting: tqdm bars for loops, a one-line status for long single steps, and
`log` for messages (through `tqdm.write`, so a live bar is not broken by them)."""

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


def log(message: str) -> None:
    """One line on stderr, printed above any live progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


@contextmanager
def status(message: str, enabled: bool = True):
    """Print `message ...` before a long step and its duration after it."""
    start = time.perf_counter()
    if enabled:
        log(f"{message} ...")
    yield
    if enabled:
        log(f"{message}: done in {time.perf_counter() - start:.1f}s")


class Phases:
    """Wall-clock seconds per named phase of a job, for its record and the benchmarks:
    `with phases("solve", "omp: solving ...", progress): ...` times the block (and prints its
    status line when a message is given); a phase entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, message: str | None = None, enabled: bool = True):
        start = time.perf_counter()
        if message:
            with status(message, enabled):
                yield
        else:
            yield
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)

    def line(self) -> str:
        """`load 4.1s, map 3.0s, ...` in the order the phases first ran."""
        return ", ".join(f"{name} {s:.1f}s" for name, s in self.seconds.items())
