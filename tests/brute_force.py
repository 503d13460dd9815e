"""Brute-force next-byte distributions of a ByteLM's token model: every valid token sequence
enumerated, validity judged by the tokenizer's own encoding of whole prefixes (not by the
rule under test), probabilities summed. Used by tests/test_byte_lm.py and by
benchmarks/byte_brute_force.py (real models, where it takes seconds to minutes per prefix).
"""

from __future__ import annotations

import math
import unicodedata
from functools import lru_cache

import numpy as np
import torch

from tokensurgery.vocabulary import TokenKind


# Every printable ASCII character and a spread of assigned characters from all over the BMP
# and beyond (letters, marks, digits, symbols, spaces of many scripts): the next characters
# brute force tries after whitespace (independent of canonical.LOOKAHEAD_PROBES).
NEXT_CHARACTERS = tuple(sorted({chr(c).encode() for c in [*range(0x20, 0x7F), *range(0xA0, 0x3100, 23),
                                                          *range(0x4E00, 0xA000, 997), *range(0xAC00, 0xD7A4, 1499),
                                                          0x1F600, 0x1F44B, 0x2028, 0x3000, 0xFEFF, 0x9, 0xA, 0xD]
                                if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")}))


# characters that can finish an unfinished UTF-8 sequence, by the bytes already there: every
# 2-byte character, a spread over the BMP, planes 1-2 and the emoji block, and the first
# character of every run of 64 code points (above U+07FF) that share all but their last byte (an assigned one
# where the run has one, else its first code point: private use, unassigned), so that every
# unfinished character has some way to finish (a 4-byte lead like F0 9D starts mathematical
# letters, F3 A0 tags, F4 only private use)
def _first_of_runs() -> list[int]:
    out = []
    for start in range(0x800, 0x110000, 64):
        if 0xD800 <= start <= 0xDFFF:
            continue
        run = range(start, start + 64)
        out.append(next((c for c in run if unicodedata.category(chr(c)) not in ("Cn", "Co")), start))
    return out


COMPLETIONS: dict[bytes, list[bytes]] = {}
for _c in dict.fromkeys([*(c for c in [*range(0x80, 0x3100), *range(0x3100, 0x10000, 61), *range(0x10000, 0x32000, 97),
                                       *range(0x1F300, 0x1FB00, 7)]
                           if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")),
                         *_first_of_runs()]):
    if not 0xD800 <= _c <= 0xDFFF:
        _b = chr(_c).encode()
        for _k in range(1, len(_b)):
            COMPLETIONS.setdefault(_b[:_k], []).append(_b)


def unfinished_character(data: bytes) -> bytes:
    """The bytes of a character the data ends inside (b"" when it ends on a boundary)."""
    for k in range(1, min(3, len(data)) + 1):
        lead = data[-k]
        if lead >= 0xC0:
            need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
            return data[-k:] if k < need and all(0x80 <= b < 0xC0 for b in data[len(data) - k + 1:]) else b""
        if lead < 0x80:
            return b""
    return b""


def last_character(data: bytes) -> str:
    """The whole character the bytes end with ("" when they end inside one)."""
    for k in range(1, 5):
        try:
            return data[-k:].decode("utf-8")[-1]
        except (UnicodeDecodeError, IndexError):
            continue
    return ""


class BruteForce:
    """Next-byte distributions by enumerating token sequences. A sequence counts when every
    prefix of it starts the tokenizer's own encoding of that prefix's bytes, or of them plus
    some next character (the regex looks one character ahead; `NEXT_CHARACTERS` are tried);
    checked on whole prefixes with `Vocabulary.decompose`, not pair by pair."""

    def __init__(self, blm: ByteLM):
        self.blm, self.vocab = blm, blm.vocab
        self.model = blm.lm.model
        self.text_ids = [i for i in range(len(self.vocab)) if blm.canonical.continuable[i]]
        self.logprobs = lru_cache(maxsize=None)(self._logprobs)

    def _logprobs(self, seq: tuple) -> np.ndarray:
        ids = torch.tensor([[self.blm.start, *seq]])
        with torch.no_grad():
            return self.model(ids).logits[0, -1].double().log_softmax(-1).numpy()

    def canonical(self, seq: tuple) -> bool:
        data = self.vocab.decode_bytes(seq)
        cut = unfinished_character(data)
        # text that ends inside a character goes on with its rest: try ways to finish it
        whole = [data[: len(data) - len(cut)] + c for c in COMPLETIONS.get(cut, ())] if cut else [data]
        if cut and self.vocab.kinds[seq[-1]] == TokenKind.BYTE_FALLBACK:
            whole.append(data + b"\x00")  # byte tokens may also leave it unfinished: not UTF-8
        for text in whole or [data]:
            last = last_character(text)
            probes = (b"",) + NEXT_CHARACTERS if last.isspace() and last not in "\x1c\x1d\x1e\x1f" else (b"",)
            if any(self.vocab.decompose(text + z)[: len(seq)] == list(seq) for z in probes):
                return True
        return False

    def next_byte(self, prefix: bytes) -> np.ndarray:
        mass = np.zeros(257)

        def walk(seq: tuple, pos: int, logp: float) -> None:
            lp = self.logprobs(seq)
            if pos == len(prefix):
                mass[256] += math.exp(logp + lp[self.blm.eos])
            for v in self.text_ids:
                s = self.vocab.surface[v]
                need = prefix[pos:]
                if len(s) <= len(need):
                    if need.startswith(s) and self.canonical(seq + (v,)):
                        walk(seq + (v,), pos + len(s), logp + lp[v])
                elif s.startswith(need) and self.canonical(seq + (v,)):
                    mass[s[len(need)]] += math.exp(logp + lp[v])

        walk((), 0, 0.0)
        return mass / mass.sum()

    def best_cover(self, prefix: bytes) -> tuple[float, bytes]:
        """The most likely cover of `prefix`: a valid sequence whose last token runs past the
        prefix's end or starts right at it (or EOS there); (log-probability, bytes past the end)."""
        best = (-math.inf, b"")

        def walk(seq: tuple, pos: int, logp: float) -> None:
            nonlocal best
            lp = self.logprobs(seq)
            if pos == len(prefix):
                best = max(best, (logp + lp[self.blm.eos], b""))
            for v in self.text_ids:
                s, need = self.vocab.surface[v], prefix[pos:]
                if len(s) <= len(need) and need:
                    if need.startswith(s) and self.canonical(seq + (v,)):
                        walk(seq + (v,), pos + len(s), logp + lp[v])
                elif s.startswith(need) and self.canonical(seq + (v,)):
                    best = max(best, (logp + lp[v], s[len(need):]))

        walk((), 0, 0.0)
        return best
