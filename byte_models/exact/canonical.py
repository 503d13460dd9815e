"""Which token may follow which: the rule that keeps only the tokenizer's own encodings.

A token sequence is *valid* when every token can be produced by the tokenizer alone
(`decompose(surface) == [token]`) and every adjacent pair is the tokenizer's own split of
the pair's bytes (for a pair ending in whitespace under a regex pre-tokenizer: of the
pair's bytes, or of them followed by some next character, since the regex looks one
character ahead; see `LOOKAHEAD_PROBES`).
For BPE without pre-tokenization this is exactly canonicality (a BPE encoding is canonical iff all its adjacent pairs are; Berglund et al. 2023, Vieira et al.
2025); with a pre-tokenizer regex the pair sees the regex too. SentencePiece byte
fallback needs more than a pair: `<0xE4><0xB8><0xAD>` is canonical only if the character
`中` has no token, so the context of a check is the whole byte-fallback character
(`tail`). Bytes that are not UTF-8 at all can only be spelled by byte tokens; those
spellings are allowed, so every byte string a vocabulary can spell has some valid
encoding.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

from tokensurgery.assets import write_cache_file
from tokensurgery.vocabulary import TEXT_KINDS, TokenKind, Vocabulary

Tail = tuple[int, ...]

# A step that ends in whitespace is judged with the next character too, because a regex
# pre-tokenizer looks ahead (`\s+(?!\S)`): it is valid when the tokenizer keeps the split
# before *some* next character. Which split it makes depends on the character's class in the
# regex (letter, digit, punctuation, symbol, whitespace) and, inside the next pre-token, on
# whether the vocabulary joins a space to that character (SmolLM2 has " x" but no " 1" or
# " 中"), so one character of each class and of several scripts is tried. The step after the
# whitespace run is then checked exactly, with the whole run as its context (`tail`).
LOOKAHEAD_PROBES = tuple(c.encode() for c in (
    "x", "X", "1", "½", ".", ",", "'", "\"", "-", "_", "(", ")", "+", "$", "^", "`", "~", "/", "\\", "@", "#",
    "中", "の", "한", "ไ", "ا", "д", "λ", "क", "é", "\u0301", "😀", "€", " ", "\n", "\t", "\r", "\u00a0", "\u3000"))


def utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with `lead` (1 for a stray byte)."""
    if lead < 0xC2 or lead > 0xF4:
        return 1
    return 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class Canonical:
    """Validity of token sequences for one vocabulary (see the module docstring).

    `continuable[i]` says token `i` can appear in a valid sequence at all;
    `invalid_after(tail)` lists the continuable tokens that may not follow `tail`.
    """

    def __init__(self, vocab: Vocabulary, tables: dict[str, np.ndarray] | None = None):
        if vocab.family == "wordpiece":
            from tokensurgery.errors import TokenSurgeryError

            raise TokenSurgeryError(f"{vocab.name or 'this tokenizer'} is WordPiece, which normalises text (case, accents, "
                                    "spaces) before splitting it; byte-level probabilities need a tokenizer that spells "
                                    "the bytes exactly (byte-level BPE, SentencePiece, Tekken, tiktoken)")
        t = self.tables(vocab) if tables is None else tables
        self.vocab = vocab
        self.is_fallback = np.array([k == TokenKind.BYTE_FALLBACK for k in vocab.kinds])
        self.continuable = t["continuable"]
        self._invalid = lru_cache(maxsize=4096)(self._compute_invalid)
        self.invalid_dir = None  # where the general check's results are kept across processes (`canonical_for`)
        # regex pre-tokenizers look ahead at whitespace: `\\s+(?!\\S)` splits "\\n\\n\\n\\nL" as
        # "\\n\\n\\n" + "\\n" + "L", so a step ending in whitespace is judged with the next
        # characters `probes` after it too, and a whitespace run is judged as a whole
        self._lookahead = vocab.family.startswith("byte_level") or vocab.family == "tiktoken"
        self.probes = _unpack_strings(t["probes"])
        self._may_end_inside, self._may_be_space = t["may_end_inside"], t["may_be_space"]
        self._batchable = bool(t["batchable"])
        if self._batchable:
            import re

            added = _unpack_strings(t["added"])
            self._added = re.compile("|".join(re.escape(a.decode()) for a in added) if added else r"(?!)")

    @staticmethod
    def tables(vocab: Vocabulary) -> dict[str, np.ndarray]:
        """The per-token arrays the rule needs, computed from the vocabulary (seconds for a
        262k vocabulary; `canonical_for` keeps them on disk)."""
        text = [i for i, k in enumerate(vocab.kinds) if k in TEXT_KINDS and vocab.surface[i]]
        continuable = np.zeros(len(vocab), dtype=bool)
        for i in text:
            continuable[i] = vocab.decompose(vocab.surface[i]) == [i]
        lookahead = vocab.family.startswith("byte_level") or vocab.family == "tiktoken"
        # tokens after which a text can end inside a character: those ending in an unfinished
        # one, and pieces made only of continuation bytes (they may finish or extend one)
        may_end_inside = np.array([bool(unfinished_character(s)) or (bool(s) and all(0x80 <= c < 0xC0 for c in s))
                                   for s in vocab.surface])
        # tokens that can go on a whitespace run: whitespace, or the rest / start of a whitespace character
        may_be_space = np.array([bool(s) and (_whitespace_so_far(s) or 0x80 <= s[0] < 0xC0) for s in vocab.surface])
        batchable, added = False, []
        if vocab._hf is not None and vocab.family.startswith("byte_level"):
            spec = hf_spec(vocab)
            added = [a["content"].encode() for a in spec.get("added_tokens", [])]
            batchable = spec.get("normalizer") is None
        return {"continuable": continuable, "may_end_inside": may_end_inside, "may_be_space": may_be_space,
                "probes": _pack_strings(_distinct_probes(vocab) if lookahead else ()),
                "batchable": np.array(batchable), "added": _pack_strings(added)}

    # ---- tails ------------------------------------------------------------------------

    def tail(self, prev: Tail, token: int) -> Tail:
        """The context that decides what may follow `prev + (token,)`: the token, or the
        whole byte-fallback character / whitespace run it continues."""
        surface = self.vocab.surface
        if self._lookahead and prev and len(prev) < 16 and self._may_be_space[token] and \
                _whitespace_so_far(b"".join(surface[t] for t in prev) + surface[token]):
            return prev + (token,)  # a regex reads a whitespace run (NBSP split over tokens too) as one piece
        if self._lookahead and prev and 0x80 <= (surface[token][:1] or b"\0")[0] < 0xC0 and \
                unfinished_character(b"".join(surface[t] for t in prev)):
            # the token goes on with a character earlier tokens started: the regex sees the whole
            # character, and after a symbol (emoji, CJK punctuation) it joins the punctuation
            # that follows ("😀'" is one piece), so such a character is the context; after a
            # letter or digit the token alone is, as for any other token
            k = len(prev) - 1
            while k > 0 and not any(b >= 0xC0 for b in surface[prev[k]]):
                k -= 1
            data = b"".join(surface[t] for t in prev[k:]) + surface[token]
            lead = max(i for i in range(len(surface[prev[k]])) if surface[prev[k]][i] >= 0xC0)
            char = data[lead: lead + utf8_length(data[lead])].decode("utf-8", "ignore")
            if len(char) != 1 or unicodedata.category(char)[0] not in "LN":
                return prev[k:] + (token,)  # unfinished, or a finished symbol
            return (token,)
        if self.is_fallback[token] and prev and self.is_fallback[prev[-1]]:
            run = bytes(self.vocab.surface[t][0] for t in prev)
            if len(run) < utf8_length(run[0]) and 0x80 <= self.vocab.surface[token][0] < 0xC0:
                return prev + (token,)  # the same character goes on
        return (token,)

    def valid_next(self, tail: Tail, token: int) -> bool:
        """May `token` follow a sequence whose context is `tail`?"""
        if not self.continuable[token]:
            return False
        data = b"".join(self.vocab.surface[t] for t in tail) + self.vocab.surface[token]
        want = list(tail) + [token]
        cut = unfinished_character(data) if self._lookahead else b""
        if cut and completions(cut):
            # the text goes on with the rest of the character (the regex only sees whole
            # characters): valid when some way to finish it keeps the split, at the start too
            # (a byte-fallback lead is not judged so: byte tokens may spell text that is not
            # UTF-8, see the module docstring)
            return any(self._keeps(data + rest, want) for rest in completions(cut))
        if not tail:
            return True
        if self.vocab.decompose(data) == want:
            return True
        return self._lookahead and _ends_in_space(data) and self._keeps(data, want)

    def _keeps(self, data: bytes, want: list[int]) -> bool:
        """Does the tokenizer start `data` (or, when it ends in whitespace, `data` and some next
        character) with `want`?"""
        n = len(want)
        if self.vocab.decompose(data)[:n] == want:
            return True
        return _ends_in_space(data) and any(self.vocab.decompose(data + p)[:n] == want for p in self.probes)

    def invalid_after(self, tail: Tail) -> np.ndarray:
        """Continuable token ids that may not follow `tail` (cached)."""
        return self._invalid(tail)

    def _compute_invalid(self, tail: Tail) -> np.ndarray:
        if not tail:
            return self._at_start()
        return self._stored(tail, lambda: self._check(tail, np.flatnonzero(self.continuable)))

    def _at_start(self) -> np.ndarray:
        """First tokens that end inside a character no way of finishing would start with them
        (any other token may start a text)."""
        if not self._lookahead:
            return np.zeros(0, dtype=np.int64)
        ends_inside = [i for i in np.flatnonzero(self.continuable & self._may_end_inside)
                       if unfinished_character(self.vocab.surface[i])]
        return self._stored((), lambda: np.array([i for i in ends_inside if not self.valid_next((), i)], dtype=np.int64))

    def _stored(self, tail: Tail, compute) -> np.ndarray:
        """`compute()` for this tail, kept on disk in `invalid_dir` when set (the general check
        encodes every candidate after the tail: most of a second for a 49k vocabulary, paid
        once per tail and machine instead of once per process); an unreadable file is
        recomputed and rewritten."""
        if self.invalid_dir is None:
            return compute()
        import hashlib

        path = self.invalid_dir / (hashlib.sha256(np.asarray(tail, dtype=np.int64).tobytes()).hexdigest()[:32] + ".npy")
        try:
            found = np.load(path, allow_pickle=False)
            if found.ndim == 1 and found.dtype.kind == "i":
                return found.astype(np.int64)
        except (OSError, ValueError, EOFError):
            pass
        out = compute()
        write_cache_file(path, lambda f: np.save(f, out.astype(np.int64)))
        return out

    def _check(self, tail: Tail, candidates: np.ndarray) -> np.ndarray:
        """The candidates that may not follow `tail`, by `valid_next`; for byte-level BPE the
        tokenizer's own batch encoder does the same splits (pre-tokenizer, then model)."""
        if not self._batchable or len(candidates) < 256:
            return np.array([b for b in candidates if not self.valid_next(tail, int(b))], dtype=np.int64)
        surface, want = self.vocab.surface, list(tail)
        prefix = b"".join(surface[t] for t in tail)
        plain, trials, slow = [], [], []  # (candidate, text): exact encodings / finished characters
        for b in candidates.tolist():
            data = prefix + surface[b]
            cut = unfinished_character(data) if self._may_end_inside[b] else b""
            if cut and completions(cut):  # ends inside a character: try ways to finish it
                texts = [(data + rest).decode("utf-8", "ignore") for rest in completions(cut)]
                if all(len(t.encode()) == len(data) + len(r) for t, r in zip(texts, completions(cut))) \
                        and not any(self._added.search(t) for t in texts):
                    trials += [(b, t) for t in texts]
                    continue
            else:
                text = data.decode("utf-8", "ignore")
                if len(text.encode()) == len(data) and not self._added.search(text):
                    plain.append((b, text))
                    continue
            slow.append(b)  # broken UTF-8 or an added token's text: the one-by-one path
        n, valid, probe = len(want) + 1, set(), []
        encode = self.vocab._hf.encode_batch
        for (b, text), enc in zip(plain, encode([t for _, t in plain], add_special_tokens=False)):
            if enc.ids == want + [b]:
                valid.add(b)
            elif self._lookahead and _is_space(text[-1:] or "x"):
                probe.append((b, text))
        for (b, text), enc in zip(trials, encode([t for _, t in trials], add_special_tokens=False)):
            if enc.ids[:n] == want + [b]:
                valid.add(b)
            elif _is_space(text[-1:] or "x"):
                probe.append((b, text))
        for p in self.probes:  # valid when some next character keeps the split
            probe = [(b, t) for b, t in probe if b not in valid]
            if not probe:
                break
            encs = encode([t + p.decode() for _, t in probe], add_special_tokens=False)
            valid.update(b for (b, t), enc in zip(probe, encs) if enc.ids[:n] == want + [b])
        tried = {b for b, _ in plain} | {b for b, _ in trials}
        bad_ids = sorted(tried - valid) + [b for b in slow if not self.valid_next(tail, b)]
        return np.array(sorted(bad_ids), dtype=np.int64)

    def is_valid(self, tokens: list[int]) -> bool:
        """Is the whole sequence valid (every token continuable, every step allowed)?"""
        tail: Tail = ()
        for t in tokens:
            if not self.valid_next(tail, t):
                return False
            tail = self.tail(tail, t)
        return True


def _merge_ranks(vocab: Vocabulary) -> dict[tuple[str, str], int] | None:
    """{(left, right): rank} of a Hugging Face BPE tokenizer, or None for other models."""
    if vocab._hf is None:
        return None
    model = hf_spec(vocab)["model"]
    if model.get("type") != "BPE" or model.get("ignore_merges") or model.get("dropout"):
        return None
    ranks: dict[tuple[str, str], int] = {}
    for rank, m in enumerate(model.get("merges", [])):
        pair = tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
        ranks.setdefault(pair, rank)
    return ranks


def _spines(chars: list[str], ranks: dict) -> tuple[bool, list, list]:
    """Run BPE on one token's characters; return whether it ends as one symbol and the
    left and right spines: the symbols that were leftmost / rightmost over time, each with
    the merge rank that created it (-1 for a character) and the rank that absorbed it."""
    parts = list(chars)
    left, right, lborn, rborn = [], [], -1, -1
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get((parts[i], parts[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        if best == 0:
            left.append((parts[0], lborn, best_rank))
            lborn = best_rank
        if best == len(parts) - 2:
            right.append((parts[-1], rborn, best_rank))
            rborn = best_rank
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    inf = np.iinfo(np.int64).max
    left.append((parts[0], lborn, inf))
    right.append((parts[-1], rborn, inf))
    return len(parts) == 1, left, right


class MergeCanonical(Canonical):
    """The same rule, fast, for Hugging Face BPE: a pair (a, b) is invalid exactly when a
    merge (r, q) joins a symbol r that is rightmost in a's derivation with a symbol q that
    is leftmost in b's while both are alive (BPE applies the lowest-ranked merge first, the
    leftmost on ties). Pairs the merges alone cannot decide (a pre-tokenizer regex acting
    at a trailing space or apostrophe; byte-fallback characters) use the general check."""

    def __init__(self, vocab: Vocabulary, tables: dict[str, np.ndarray] | None = None):
        t = self.tables(vocab) if tables is None else tables
        super().__init__(vocab, t)
        # right spines, flattened: token i's are rows _rstart[i]:_rstart[i+1] of (symbol, born, dies)
        self._has_right, self._rstart, self._right = t["has_right"], t["right_start"], t["right"]
        # left spines sorted by symbol: rows _lstart[q]:_lstart[q+1] are (token, born, dies) of symbol q
        self._lstart, self._lb, self._lborn, self._ldies = t["left_start"], t["left"][:, 0], t["left"][:, 1], t["left"][:, 2]
        # merges by left symbol: rows _mstart[l]:_mstart[l+1] are (rank, right symbol), by rank
        self._mstart, self._merges = t["merge_start"], t["merges"]
        self._regex = bool(t["regex"])
        self._fallback_ids, self._punct_start = t["fallback_ids"], t["punct_start"]
        self._continues = np.array([i for i in np.flatnonzero(self.continuable)
                                    if 0x80 <= (vocab.surface[i][:1] or b"\0")[0] < 0xC0], dtype=np.int64)

    @staticmethod
    def tables(vocab: Vocabulary) -> dict[str, np.ndarray]:
        """`Canonical.tables` plus the merge spines of every token (the slow part: BPE run on
        each token in Python)."""
        ranks = _merge_ranks(vocab) or {}
        t = Canonical.tables(vocab)
        continuable = t["continuable"]
        n = len(vocab)
        symbol = {tok: i for i, tok in enumerate(vocab.tokens) if vocab.kinds[i] in (TokenKind.NORMAL, TokenKind.UNUSED)}
        normal = [i for i in np.flatnonzero(continuable) if vocab.kinds[i] == TokenKind.NORMAL]
        has_right = np.zeros(n, dtype=bool)
        right_len = np.zeros(n, dtype=np.int64)
        right, left = [], []  # (symbol, born, dies); (left symbol, token, born, dies)
        for i in normal:
            ok, lspine, rspine = _spines(list(vocab.tokens[i]), ranks)
            if not ok:
                continue
            has_right[i], right_len[i] = True, len(rspine)
            right += [(symbol.get(s, -1), born, dies) for s, born, dies in rspine]
            left += [(symbol.get(s, -1), i, born, dies) for s, born, dies in lspine]
        e = np.array(left, dtype=np.int64).reshape(-1, 4)
        e = e[np.argsort(e[:, 0], kind="stable")]
        merges = sorted((symbol[l], rank, symbol[r]) for (l, r), rank in ranks.items() if l in symbol and r in symbol)
        m = np.array(merges, dtype=np.int64).reshape(-1, 3)
        # tokens outside the merge table (byte fallback, added text tokens) are checked one by one
        fallback = [i for i in np.flatnonzero(continuable) if vocab.kinds[i] != TokenKind.NORMAL]
        # a regex run of punctuation may swallow the start of the next token (" (" + "'m")
        punct = [i for i in normal if _punct(vocab.surface[i], first=True)]
        return t | {"has_right": has_right, "right_start": np.concatenate([[0], np.cumsum(right_len)]),
                    "right": np.array(right, dtype=np.int64).reshape(-1, 3),
                    "left_start": np.searchsorted(e[:, 0], np.arange(n + 1)), "left": e[:, 1:].copy(),
                    "merge_start": np.searchsorted(m[:, 0], np.arange(n + 1)), "merges": m[:, 1:].copy(),
                    "regex": np.array(vocab.family.startswith("byte_level") and "ByteLevel" in json_types_of(vocab)),
                    "fallback_ids": np.array(fallback, dtype=np.int64), "punct_start": np.array(punct, dtype=np.int64)}

    def _compute_invalid(self, tail: Tail) -> np.ndarray:
        if not tail:
            return self._at_start()
        a = tail[-1]
        if self.is_fallback[a]:  # nothing merges across a byte-fallback character
            return self._check(tail, self._fallback_ids)
        if self.vocab.kinds[a] != TokenKind.NORMAL:
            return super()._compute_invalid(tail)
        surface = self.vocab.surface[a]
        inside = len(tail) > 1 and bool(unfinished_character(b"".join(self.vocab.surface[t] for t in tail)))
        if not self._has_right[a] or (self._regex and (_space(surface, first=False) or b"'" in surface
                                                       or len(tail) > 1 and not inside)):
            # whitespace look-ahead (a run, or a space character split over tokens: " \xc2" +
            # "\xa0" is NBSP), contractions: check every pair
            return super()._compute_invalid(tail)
        found = []
        if self._regex and _punct(surface, first=False):
            found.append(self._check(tail, self._punct_start))
        for r, born, dies in self._right[self._rstart[a] : self._rstart[a + 1]].tolist():
            if r < 0 or self._mstart[r] == self._mstart[r + 1]:
                continue
            merges = self._merges[self._mstart[r] : self._mstart[r + 1]]
            live = merges[(merges[:, 0] > born) & (merges[:, 0] < dies)]
            for mu, q in live:
                lo, hi = self._lstart[q], self._lstart[q + 1]
                if hi > lo:
                    sel = (self._lborn[lo:hi] < mu) & (mu <= self._ldies[lo:hi])
                    found.append(self._lb[lo:hi][sel])
        if len(self._fallback_ids):
            found.append(self._check(tail, self._fallback_ids))
        if inside:
            # inside a character earlier tokens started: what goes on with it is checked with the
            # whole character (the merges alone judge the rest, which is not UTF-8 after it)
            found = [np.setdiff1d(f, self._continues) for f in found] + [self._check(tail, self._continues)]
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _punct(data: bytes, first: bool) -> bool:
    """Does the token start (`first`) or end with a character of the regex's punctuation
    class `[^\\s\\p{L}\\p{N}]`?"""
    import unicodedata

    text = data.decode("utf-8", "ignore")
    if not text:
        return False
    ch = text[0] if first else text[-1]
    return not _is_space(ch) and unicodedata.category(ch)[0] not in "LN"


def _is_space(ch: str) -> bool:
    """Unicode White_Space, the regex's `\\s` (Python's isspace also counts \\x1c-\\x1f)."""
    return ch.isspace() and ch not in "\x1c\x1d\x1e\x1f"


_SPACE_ENCODINGS = [chr(c).encode() for c in range(0x80, 0x3001) if chr(c).isspace()]


def _whitespace_so_far(data: bytes) -> bool:
    """Are the bytes whitespace characters, the last one possibly unfinished (b" \xc2" is a
    space and the start of NBSP)?"""
    for k in range(0, min(3, len(data)) + 1):
        head, cut = data[: len(data) - k], data[len(data) - k:]
        if cut and not any(e.startswith(cut) and len(e) > len(cut) for e in _SPACE_ENCODINGS):
            continue
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            continue
        return (bool(text) or bool(cut)) and all(_is_space(ch) for ch in text)
    return False


def unfinished_character(data: bytes) -> bytes:
    """The bytes of a UTF-8 character the data ends inside (b"" on a character boundary)."""
    for k in range(1, min(3, len(data)) + 1):
        lead = data[-k]
        if lead >= 0xC0:
            return data[-k:] if k < utf8_length(lead) and all(0x80 <= b < 0xC0 for b in data[len(data) - k + 1:]) else b""
        if lead < 0x80:
            return b""
    return b""


@lru_cache(maxsize=4096)
def completions(cut: bytes, most: int = 64) -> tuple[bytes, ...]:
    """Up to `most` ways to finish the character `cut` starts (the missing bytes), spread
    over the assigned characters that start so (scripts, symbols, emoji) plus every space
    among them; where none is assigned (private-use planes, unassigned blocks), over the
    code points there. () when no character starts with `cut`."""
    import unicodedata

    n = utf8_length(cut[0])
    if n == 1 or len(cut) >= n:
        return ()
    # the code points whose encoding starts with `cut`, from the bits (not by decoding padded
    # bytes: E0, ED, F0 and F4 allow only part of the continuation range after them)
    lo = hi = cut[0] & (0x7F >> n)
    for b in cut[1:]:
        lo = hi = (lo << 6) | (b & 0x3F)
    pad = n - len(cut)
    lo, hi = lo << 6 * pad, (hi << 6 * pad) | ((1 << 6 * pad) - 1)
    lo, hi = max(lo, {2: 0x80, 3: 0x800, 4: 0x10000}[n]), min(hi, 0x10FFFF)
    points = [c for c in range(lo, hi + 1) if not 0xD800 <= c <= 0xDFFF and chr(c).encode().startswith(cut)]
    found = [c for c in points if unicodedata.category(chr(c)) not in ("Cn", "Co")] or points
    if len(found) > most:
        step = len(found) / most
        found = [c for c in points if _is_space(chr(c))] + [found[int(i * step)] for i in range(most)]
    return tuple(dict.fromkeys(chr(c).encode()[len(cut):] for c in found))


_RUNS = [b" ", b"  ", b"   ", b"\n", b"\n\n", b" \n", b"\n ", b"\n  ", b"\t", b"\t\t", b"\r\n", "\u00a0".encode(),
         " \u00a0".encode(), "\u3000".encode()]


def _distinct_probes(vocab: Vocabulary) -> tuple[bytes, ...]:
    """The `LOOKAHEAD_PROBES` that split whitespace differently in this vocabulary: two next
    characters that leave every run of `_RUNS` in the same tokens (and join its end to
    themselves or not alike) judge whitespace steps alike, so one of them is enough."""
    seen, keep = set(), []
    for p in LOOKAHEAD_PROBES:
        signature = []
        for run in _RUNS:
            ids, done = vocab.decompose(run + p), 0
            inside = []
            for t in ids:
                if done + len(vocab.surface[t]) > len(run):
                    break
                inside.append(t)
                done += len(vocab.surface[t])
            signature.append((tuple(inside), done == len(run)))
        if tuple(signature) not in seen:
            seen.add(tuple(signature))
            keep.append(p)
    return tuple(keep)


def _ends_in_space(data: bytes) -> bool:
    """Do the bytes end with a whole whitespace character (not inside an unfinished one)?"""
    for k in range(1, min(4, len(data)) + 1):
        try:
            return _is_space(data[-k:].decode("utf-8")[-1])
        except UnicodeDecodeError:
            continue
    return False


def _space(data: bytes, first: bool) -> bool:
    text = data.decode("utf-8", "ignore")
    return bool(text) and _is_space(text[0] if first else text[-1])


def hf_spec(vocab: Vocabulary) -> dict:
    """The tokenizer.json of a Hugging Face vocabulary, parsed once per Vocabulary (Gemma-3's
    is tens of MB: 262k tokens, 515k merges)."""
    import json

    if "_hf_spec" not in vocab.__dict__:
        vocab.__dict__["_hf_spec"] = json.loads(vocab._hf.to_str()) if vocab._hf is not None else {}
    return vocab.__dict__["_hf_spec"]


def json_types_of(vocab: Vocabulary) -> set[str]:
    """Component types in the tokenizer's pre-tokenizer (e.g. {'ByteLevel'})."""
    from tokensurgery.vocabulary import _json_types

    return _json_types(hf_spec(vocab).get("pre_tokenizer"))


TABLES_VERSION = 1  # bump when `tables` changes what it computes: cached files of older versions are ignored
RULE_VERSION = 3  # bump when the general check changes what it forbids: the invalid sets kept on disk are per version


def canonical_for(vocab: Vocabulary, cache: bool = True) -> Canonical:
    """The fastest exact validity rule available for this vocabulary: merge spines for HF BPE
    with no pre-tokenizer (Gemma) or GPT-2's ByteLevel regex alone (SmolLM2); the general
    check for anything else (Llama-3/Tekken digit groups, WordPiece, Unigram, tiktoken).

    With `cache`, the rule's tables for a Hugging Face tokenizer are kept in
    `$TOKENSURGERY_CACHE/canonical/`, keyed by a hash of its tokenizer.json (Gemma-3's take
    seconds to compute, a fraction of a second to read), and so are the general check's
    invalid sets, one file per tail (whitespace runs: most of a second each for SmolLM2);
    an unreadable file is recomputed."""
    key = _tables_key(vocab) if cache else None
    path = None
    if key is not None:
        from tokensurgery.assets import cache_dir

        path = cache_dir() / "canonical" / f"{key}.npz"
        tables = _read_tables(path)
        if tables is not None:
            rule = (MergeCanonical if bool(tables["merge_rule"]) else Canonical)(vocab, tables)
            rule.invalid_dir = _invalid_dir(path, key)
            return rule
    cls = Canonical
    ranks = _merge_ranks(vocab)
    if ranks:
        pre = hf_spec(vocab).get("pre_tokenizer")
        types = json_types_of(vocab)
        if pre is None or types == {"Split"} and pre.get("pattern") == {"String": " "} and not vocab.family.startswith("byte") \
                or (types == {"ByteLevel"} and pre.get("use_regex", True)):
            cls = MergeCanonical
    tables = cls.tables(vocab) | {"merge_rule": np.array(cls is MergeCanonical)}
    rule = cls(vocab, tables)
    if path is not None:
        _write_tables(path, tables)
        rule.invalid_dir = _invalid_dir(path, key)
    return rule


def _invalid_dir(tables_path, key: str):
    """Where the general check's invalid sets of this tokenizer and rule version are kept."""
    return tables_path.parent / f"{key}-rule{RULE_VERSION}"


def _tables_key(vocab: Vocabulary) -> str | None:
    """A hash of the tokenizer's full definition and of what `tables` computes (None: not a
    Hugging Face tokenizer, nothing to key on)."""
    if vocab._hf is None:
        return None
    import hashlib

    spec = vocab._hf.to_str().encode()
    return hashlib.sha256(spec + f"|{vocab.family}|{TABLES_VERSION}".encode()).hexdigest()[:32]


def _read_tables(path) -> dict[str, np.ndarray] | None:
    """The saved tables, or None when the file is missing or unreadable (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _write_tables(path, tables: dict[str, np.ndarray]) -> None:
    write_cache_file(path, lambda f: np.savez(f, **tables))


def _pack_strings(items) -> np.ndarray:
    """Byte strings as one uint8 array: a 4-byte length before each (arrays of objects would need pickles)."""
    out = bytearray()
    for b in items:
        out += len(b).to_bytes(4, "little") + b
    return np.frombuffer(bytes(out), dtype=np.uint8)


def _unpack_strings(packed: np.ndarray) -> tuple[bytes, ...]:
    data, out, i = packed.tobytes(), [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 4], "little")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return tuple(out)
