"""Batch-level BPE merging of BASE's tokenization (dynamic tokenization, Feher et al. 2025).

A batch of texts is tokenized by BASE; the tokens are cut into *segments* that merges may
not cross; then the most frequent adjacent pair over the whole batch is merged, again and
again (`kernels.merges`), until `merges` merges are made or the batch has `reduction` fewer
tokens. Whitespace-only tokens merge only with whitespace-only tokens; special tokens never
merge. A merged token whose bytes BASE already has as one token becomes that token.

Segments (`boundary`):
- `pretokens` (default): the pre-tokens of BASE's own pre-tokenizer (GPT-2-style regexes:
  words, numbers, punctuation runs, whitespace runs). Tokenizers whose pre-tokenizer does not
  split words (SentencePiece conversions such as Gemma's) fall back to `word`.
- `word`: a new segment starts at every token that starts with whitespace and after every
  token that ends with it (punctuation stays with its word: `world.` can become one token).
- `sentence`: a new segment starts after `.`, `!`, `?` (and CJK full stops) followed by
  whitespace, and after a line break.

With `whole_chars`, a token whose bytes are not whole UTF-8 characters (a byte-level BPE's
pieces of a CJK, Thai, Indic or emoji character) stands alone in its own segment, so no
merge touches it: new tokens are then always made of whole characters.

Not handled: texts BASE cannot spell exactly (an [UNK] token) are refused, not repaired.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.merges import merge_words
from tokensurgery.vocabulary import TEXT_KINDS, Vocabulary, _is_utf8

BOUNDARIES = ("pretokens", "word", "sentence")
WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
SENTENCE_END = (b".", b"!", b"?", "。".encode(), "！".encode(), "？".encode())


@dataclass(frozen=True)
class NewToken:
    """A token the batch made: its surface bytes and the BASE ids it joins."""

    surface: bytes
    parts: tuple[int, ...]


@dataclass
class MergedBatch:
    """A batch in BASE's tokenization and after merging.

    `ids[r]` are ids over BASE's vocabulary (< `n_base`) and the batch's new tokens
    (`n_base + k` is `new_tokens[k]`); `base_ids[r]` is BASE's own tokenization of text r;
    `limit` is the fewest tokens merging could reach (one per same-kind run of a segment)."""

    base_ids: list[list[int]]
    ids: list[list[int]]
    new_tokens: list[NewToken]
    n_base: int
    limit: int
    merges: int
    seconds: float
    known: int = 0  # merged tokens that turned out to be BASE tokens
    segments: list[list[list[int]]] = field(default_factory=list, repr=False)

    @property
    def tokens_before(self) -> int:
        return sum(map(len, self.base_ids))

    @property
    def tokens_after(self) -> int:
        return sum(map(len, self.ids))

    @property
    def reduction(self) -> float:
        """Fraction of tokens saved: 1 - after / before."""
        return 1 - self.tokens_after / max(self.tokens_before, 1)

    @property
    def reduction_to_limit(self) -> float:
        """The paper's measure: the fraction of the way from BASE's tokens to one token per
        segment run (word-level tokenization at 1.0)."""
        room = self.tokens_before - self.limit
        return (self.tokens_before - self.tokens_after) / room if room > 0 else 0.0


def check_budget(merges: int | None, reduction: float | None) -> None:
    """A merge budget: `merges` >= 0 and/or `reduction` in [0, 1); neither means no merges."""
    if merges is not None and merges < 0:
        raise TokenSurgeryError(f"merges must be >= 0, got {merges}")
    if reduction is not None and not 0 <= reduction < 1:
        raise TokenSurgeryError(f"reduction must be a fraction in [0, 1), got {reduction}")


def _is_whitespace(data: bytes) -> bool:
    return bool(data) and WHITESPACE.issuperset(data)


class BatchMerger:
    """Merges batches of texts for one BASE vocabulary (`n_base`: BASE's embedding rows, so
    that new ids never collide with padding rows)."""

    def __init__(self, vocab: Vocabulary, boundary: str = "pretokens", n_base: int | None = None,
                 whole_chars: bool = False):
        if boundary not in BOUNDARIES:
            raise TokenSurgeryError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
        self.vocab = vocab
        self.n_base = max(n_base or 0, len(vocab))
        self.text_ids = frozenset(i for i, k in enumerate(vocab.kinds) if k in TEXT_KINDS)
        self.whole_chars = whole_chars
        self.pieces = frozenset(i for i in self.text_ids if not _is_utf8(vocab.surface[i])) if whole_chars \
            else frozenset()
        self.by_bytes = vocab.by_bytes
        # a pre-tokenizer that keeps "a b c" in one piece does not split words: use the word rule
        self.boundary = "word" if boundary == "pretokens" and len(vocab.encode_pretokens("a b c")) < 3 else boundary

    # ---- segments -------------------------------------------------------------------------

    def segments(self, text: str) -> list[list[int]]:
        """BASE's tokenization of `text`, cut where merges may not cross."""
        groups = self.vocab.encode_pretokens(text) if self.boundary == "pretokens" else [self.vocab.encode(text)]
        self._check_spelled(text, groups)
        out: list[list[int]] = []
        for g in groups:
            for i, t in enumerate(g):
                if not out or i == 0 and self.boundary == "pretokens" or self._starts_segment(g[i - 1] if i else None, t):
                    out.append([])
                out[-1].append(t)
        return out

    def _starts_segment(self, prev: int | None, tok: int) -> bool:
        if prev is None or tok not in self.text_ids or prev not in self.text_ids:
            return True  # specials stand alone
        if tok in self.pieces or prev in self.pieces:
            return True  # so do pieces of characters, with `whole_chars`
        s, p = self.vocab.surface[tok], self.vocab.surface[prev]
        if self.boundary == "pretokens":
            return False
        if self.boundary == "word":
            return s[:1].isspace() or p[-1:].isspace()
        ends = p.rstrip()
        return b"\n" in p or (ends.endswith(SENTENCE_END) and (p != ends or s[:1].isspace()))

    def _check_spelled(self, text: str, groups: list[list[int]]) -> None:
        got = self.vocab.decode_bytes(i for g in groups for i in g)
        want = text.encode("utf-8")
        if got != want and not (self.vocab.prepends_space and got == b" " + want):
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise TokenSurgeryError(f"BASE ({self.vocab.name or self.vocab.family}) cannot spell this text exactly: "
                                    f"its tokens decode to different bytes from byte {at} ({want[at:at + 12]!r})")

    # ---- merging ----------------------------------------------------------------------------

    def __call__(self, texts: list[str], merges: int | None = None, reduction: float | None = None,
                 tail: int = 0) -> MergedBatch:
        """Merge a batch: at most `merges` merges (None: no limit) and/or until `reduction`
        (a fraction, plain fewer tokens) is reached. Neither: no merges. `tail`: see
        `merge_segments`."""
        start = time.perf_counter()
        if not texts:
            raise TokenSurgeryError("the batch is empty: nothing to merge")
        check_budget(merges, reduction)
        segments = [self.segments(t) for t in texts]
        return self.merge_segments(segments, merges, reduction, start, tail=tail)

    def merge_segments(self, segments: list[list[list[int]]], merges: int | None = None,
                       reduction: float | None = None, start: float | None = None, tail: int = 0) -> MergedBatch:
        """`__call__` on texts already cut into segments (BASE ids). The last `tail` segments
        of each text stay in BASE's tokens (a prompt's end, where decoding goes on from): they
        count towards `reduction` but take part in no merge, so the rest merges more."""
        start = time.perf_counter() if start is None else start
        check_budget(merges, reduction)
        if tail < 0:
            raise TokenSurgeryError(f"tail must be >= 0 segments, got {tail}")
        if merges is None and reduction is None:
            merges = 0
        cut = [len(text) - min(tail, len(text)) for text in segments]
        counts = Counter(tuple(s) for text, k in zip(segments, cut) for s in text[:k])
        kept = sum(len(s) for text, k in zip(segments, cut) for s in text[k:])
        words = list(counts)
        group = {t: self._group(t) for w in words for t in w}
        before = sum(len(w) * c for w, c in counts.items())
        min_tokens = max(int((before + kept) * (1 - reduction)) - kept, 0) if reduction is not None else 0
        result = merge_words(words, [counts[w] for w in words], self.n_base, group, merges, min_tokens)
        parts: dict[int, tuple[int, ...]] = {}
        for a, b, new in result.merges:
            parts[new] = parts.get(a, (a,)) + parts.get(b, (b,))
        merged = dict(zip(words, result.words))
        renumber: dict[int, int] = {}
        new_tokens: list[NewToken] = []
        known = 0

        def final(sym: int) -> int:
            nonlocal known
            if sym < self.n_base:
                return sym
            got = renumber.get(sym)
            if got is None:
                surface = self.vocab.decode_bytes(parts[sym])
                got = self.by_bytes.get(surface)
                if got is not None:
                    known += 1
                else:
                    got = self.n_base + len(new_tokens)
                    new_tokens.append(NewToken(surface, parts[sym]))
                renumber[sym] = got
            return got

        ids = [[final(s) for seg in text[:k] for s in merged[tuple(seg)]] + [t for seg in text[k:] for t in seg]
               for text, k in zip(segments, cut)]
        limit = sum(self.runs(w) * c for w, c in counts.items()) + kept
        return MergedBatch([[t for seg in text for t in seg] for text in segments], ids, new_tokens, self.n_base,
                           limit, len(result.merges), time.perf_counter() - start, known, segments)

    def _group(self, tok: int) -> int:
        if tok not in self.text_ids:
            return -1 - tok  # a special merges with nothing (it also stands alone in its segment)
        return 1 if _is_whitespace(self.vocab.surface[tok]) else 0

    def runs(self, word: tuple[int, ...]) -> int:
        """The fewest tokens a segment can merge into: one per same-kind run."""
        groups = [self._group(t) for t in word]
        return sum(1 for i, g in enumerate(groups) if i == 0 or g != groups[i - 1])
