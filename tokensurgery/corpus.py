"""Training text: files (or the bundled corpus) read once, random windows drawn from them.

The bundled corpus is music21's Gutenberg excerpts (7 languages) and Python standard-library
modules. `holdout_bytes` leaves the start of every excerpt, and `argparse.py`, out of it:
that is the text the benchmarks evaluate on (`tokensurgery eval` uses the same starts).
"""

from __future__ import annotations

import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .assets import CODE_FILES, CORPUS_LANGUAGES, corpus_text
from .errors import TokenSurgeryError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".c", ".h", ".js", ".html", ".tex", ".csv")
STDLIB_MODULES = ("collections/__init__.py", "dataclasses.py", "difflib.py", "email/message.py", "fractions.py",
                  "functools.py", "inspect.py", "json/decoder.py", "logging/__init__.py", "pathlib.py", "pprint.py",
                  "random.py", "shutil.py", "statistics.py", "string.py", "textwrap.py", "typing.py", "zipfile.py")


@dataclass
class Corpus:
    """Named texts to draw training windows from."""

    texts: list[tuple[str, str]]

    def __post_init__(self):
        self.texts = [(n, t) for n, t in self.texts if len(t) >= 64]
        if not self.texts:
            raise TokenSurgeryError("the training corpus is empty (give text files or folders with --corpus)")
        self._weights = [len(t) for _, t in self.texts]

    @property
    def n_chars(self) -> int:
        return sum(self._weights)

    def sources(self) -> dict[str, list[int]]:
        """Texts by source: the part of the name before ':' (`music21`, `stdlib`,
        `multilingual-dev`, `multilingual-train`), or the whole name for a user's file."""
        groups: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(self.texts):
            groups.setdefault(name.split(":", 1)[0], []).append(i)
        return groups

    def record(self) -> dict:
        """What a training record says about its text: the sources (at most 20 names) and characters."""
        return {"corpus": sorted(self.sources())[:20], "corpus_chars": self.n_chars}

    def window(self, rng: random.Random, n_chars: int, mix: str = "chars") -> str:
        """A random window of about `n_chars` characters starting after whitespace, from a text
        drawn in proportion to its length (`mix="chars"`), or from a source drawn uniformly,
        then a text of it by length (`mix="source"`: a small source such as the multilingual
        tuning half is not drowned by a large one)."""
        if mix == "source":
            groups = list(self.sources().values())
            members = groups[rng.randrange(len(groups))]
            _, text = self.texts[rng.choices(members, weights=[self._weights[i] for i in members])[0]]
        elif mix == "chars":
            _, text = rng.choices(self.texts, weights=self._weights)[0]
        else:
            raise TokenSurgeryError(f"mix must be 'chars' or 'source', got {mix!r}")
        start = rng.randrange(max(1, len(text) - n_chars))
        if start:
            space = text.find(" ", start, start + 64)
            start = space if space >= 0 else start
        return text[start : start + n_chars]

    @classmethod
    def from_paths(cls, paths: list[str | Path]) -> "Corpus":
        """UTF-8 text files, or folders searched for text/code files; `bundled` for the bundled
        corpus, `multilingual-dev` for the tuning half of the multilingual evaluation set (13
        script groups; its `test` half is what the benchmarks report and is never a corpus),
        `multilingual-train` for the set's training part (up to 24 KB per group, no line of either
        half)."""
        from .assets import CORPUS_SETS, corpus_set_paths

        texts = []
        for p in paths:
            if str(p) == "bundled":
                texts += bundled_corpus().texts
                continue
            if str(p) in CORPUS_SETS:
                texts += [(f"{p}:{f.stem}", f.read_text(encoding="utf-8")) for f in corpus_set_paths(str(p))]
                continue
            path = Path(p).expanduser()
            if not path.exists():
                raise TokenSurgeryError(f"corpus path not found: {path}")
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.suffix in TEXT_SUFFIXES and f.is_file())
            for f in files:
                try:
                    texts.append((str(f), f.read_text(encoding="utf-8").replace("\r\n", "\n")))
                except UnicodeDecodeError:
                    if path.is_file():
                        raise TokenSurgeryError(f"{f} is not UTF-8 text") from None
        return cls(texts)


def bundled_corpus(holdout_bytes: int = 16384) -> Corpus:
    """music21's excerpts minus their first `holdout_bytes` bytes, plus stdlib modules
    (never the evaluation file `argparse.py`)."""
    texts = []
    for lang in CORPUS_LANGUAGES:
        text = corpus_text(lang)
        cut = len(text.encode()[:holdout_bytes].decode("utf-8", "ignore"))
        texts.append((f"music21:{lang}", text[cut:]))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in STDLIB_MODULES:
        if Path(rel).name not in CODE_FILES.values() and (stdlib / rel).exists():
            texts.append((f"stdlib:{rel}", (stdlib / rel).read_text(encoding="utf-8")))
    return Corpus(texts)
