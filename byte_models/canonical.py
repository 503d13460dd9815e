"""Which token may follow which: the rule that keeps only the tokenizer's own encodings.

A token sequence is *valid* when every token can be produced by the tokenizer alone
(`decompose(surface) == [token]`) and every adjacent pair is the tokenizer's own split of
the pair's bytes. For BPE without pre-tokenization this is exactly canonicality (a BPE
encoding is canonical iff all its adjacent pairs are; Berglund et al. 2023, Vieira et al.
2025); with a pre-tokenizer regex the pair sees the regex too. SentencePiece byte
fallback needs more than a pair: `<0xE4><0xB8><0xAD>` is canonical only if the character
`中` has no token, so the context of a check is the whole byte-fallback character
(`tail`). Bytes that are not UTF-8 at all can only be spelled by byte tokens; those
spellings are allowed, so every byte string a vocabulary can spell has some valid
encoding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tokensurgery.vocabulary import TEXT_KINDS, TokenKind, Vocabulary

Tail = tuple[int, ...]


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

    def __init__(self, vocab: Vocabulary):
        if vocab.prepends_space:
            from tokensurgery.errors import TokenSurgeryError

            raise TokenSurgeryError(f"{vocab.name or 'this tokenizer'} prepends a word-start space to every text "
                                    "(Llama-2/Mistral v1-v3 SentencePiece); byte-level probabilities support tokenizers "
                                    "that encode text as written (byte-level BPE, Gemma-style SentencePiece, Tekken)")
        self.vocab = vocab
        self.size = len(vocab)
        self.is_fallback = np.array([k == TokenKind.BYTE_FALLBACK for k in vocab.kinds])
        text = [i for i, k in enumerate(vocab.kinds) if k in TEXT_KINDS and vocab.surface[i]]
        self.continuable = np.zeros(self.size, dtype=bool)
        for i in text:
            self.continuable[i] = vocab.decompose(vocab.surface[i]) == [i]
        self._invalid = lru_cache(maxsize=4096)(self._compute_invalid)

    # ---- tails ------------------------------------------------------------------------

    def tail(self, prev: Tail, token: int) -> Tail:
        """The context that decides what may follow `prev + (token,)`."""
        if self.is_fallback[token] and prev and self.is_fallback[prev[-1]]:
            run = bytes(self.vocab.surface[t][0] for t in prev)
            if len(run) < utf8_length(run[0]) and 0x80 <= self.vocab.surface[token][0] < 0xC0:
                return prev + (token,)  # the same character goes on
        return (token,)

    def valid_next(self, tail: Tail, token: int) -> bool:
        """May `token` follow a sequence whose context is `tail`?"""
        if not self.continuable[token]:
            return False
        if not tail:
            return True
        data = b"".join(self.vocab.surface[t] for t in tail) + self.vocab.surface[token]
        return self.vocab.decompose(data) == list(tail) + [token]

    def invalid_after(self, tail: Tail) -> np.ndarray:
        """Continuable token ids that may not follow `tail` (cached)."""
        return self._invalid(tail)

    def _compute_invalid(self, tail: Tail) -> np.ndarray:
        if not tail:
            return np.zeros(0, dtype=np.int64)
        ids = np.flatnonzero(self.continuable)
        return np.array([i for i in ids if not self.valid_next(tail, int(i))], dtype=np.int64)

    def is_valid(self, tokens: list[int]) -> bool:
        """Is the whole sequence valid (every token continuable, every step allowed)?"""
        tail: Tail = ()
        for t in tokens:
            if not self.valid_next(tail, t):
                return False
            tail = self.tail(tail, t)
        return True
