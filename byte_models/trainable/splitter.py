"""Cutting byte streams into words (or patches) for hierarchical byte-level models.

`split_words` follows the Hierarchical Autoregressive Transformers rule: Unicode word
boundaries (letters, marks and digits stay together, apostrophes inside a word too; every
CJK ideograph or kana is a word of its own), a cut after every punctuation character, and
a single space in front of a word or punctuation character joins it (other whitespace runs
are words of their own, minus that last space). Pieces longer than `max_bytes` are chopped,
at character boundaries when a character fits. Bytes that are not UTF-8 are one piece each.
`split_whitespace` and `split_fixed` are the simpler alternatives. For every input,
joining the pieces gives the input back exactly.
"""

from __future__ import annotations

import regex

from tokensurgery.vocabulary import utf8_runs

_WORD = regex.compile(
    r" ?(?:[\p{Han}\p{Hiragana}\p{Katakana}]"  # one ideograph / kana per word
    r"|[\p{L}\p{M}\p{N}_]+(?:['’][\p{L}\p{M}\p{N}_]+)*)"  # a word, inner apostrophes kept
    r"| ?[^\s\p{L}\p{M}\p{N}_]"  # one punctuation or symbol character
    r"|\s+(?= \S)|\s+",  # whitespace runs (a last space before a word goes to that word)
    regex.DOTALL,
)
_WHITESPACE = regex.compile(rb"\s*\S+|\s+")


def _chop(piece: str, max_bytes: int) -> list[bytes]:
    """Cut a piece into chunks of at most `max_bytes` bytes, between characters when possible."""
    data = piece.encode()
    if len(data) <= max_bytes:
        return [data]
    out, current = [], b""
    for ch in piece:
        b = ch.encode()
        if current and len(current) + len(b) > max_bytes:
            out.append(current)
            current = b""
        while len(b) > max_bytes:  # a character longer than the limit is cut inside
            out.append(b[:max_bytes])
            b = b[max_bytes:]
        current += b
    if current:
        out.append(current)
    return out


def split_words(data: bytes, max_bytes: int = 16) -> list[bytes]:
    """Word pieces of `data` by the hierarchical-transformer rule (see the module docstring)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    pieces: list[bytes] = []
    for valid, run in utf8_runs(data):
        if not valid:
            pieces.append(run)
            continue
        for m in _WORD.finditer(run.decode("utf-8")):
            pieces += _chop(m.group(), max_bytes)
    return pieces


def split_whitespace(data: bytes, max_bytes: int | None = None) -> list[bytes]:
    """Pieces that each end a run of non-whitespace bytes (whitespace goes with the next word)."""
    pieces = _WHITESPACE.findall(data)
    if max_bytes is None:
        return pieces
    return [p[i : i + max_bytes] for p in pieces for i in range(0, len(p), max_bytes)]


def split_fixed(data: bytes, size: int = 4) -> list[bytes]:
    """Patches of `size` bytes (the last one shorter)."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    return [data[i : i + size] for i in range(0, len(data), size)]


SPLITTERS = {"words": split_words, "whitespace": split_whitespace, "fixed": split_fixed}
