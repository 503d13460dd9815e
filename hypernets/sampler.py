"""Random tokenizers for training: a unigram tokenizer sampled from recent text's substrings.

ZeTT trains on a fresh tokenizer per batch so the hypernetwork sees many vocabularies. Here
the text of the last few batches is cut into pre-tokens (a GPT-2-style regex: words with
their leading space, numbers, punctuation runs, whitespace), every substring of up to
`max_piece_chars` characters is counted (counts are updated as texts enter and leave the
window), and a vocabulary of the `size` best substrings under noisy log-count scores
becomes a `tokenizers` Unigram model with byte fallback (every single character seen is
kept, so text always encodes).
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass

import regex

PRETOKEN = regex.compile(r" ?\p{L}+(?:['’]\p{L}+)?| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def substrings(text: str, max_chars: int) -> Counter:
    """Counts of every substring (up to `max_chars` characters) of every pre-token."""
    counts: Counter = Counter()
    for word in PRETOKEN.findall(text):
        n = len(word)
        for i in range(n):
            for j in range(i + 1, min(n, i + max_chars) + 1):
                counts[word[i:j]] += 1
    return counts


@dataclass
class SampledTokenizer:
    """A sampled vocabulary: `pieces[i]` is token i's text (then 256 byte tokens `<0xXX>` and `<unk>`,
    which byte fallback never emits)."""

    tokenizer: "object"  # tokenizers.Tokenizer
    pieces: list[str]
    surfaces: list[bytes]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __len__(self) -> int:
        return len(self.pieces)


class UnigramSampler:
    """Keeps substring counts over a window of recent texts and samples tokenizers from them."""

    def __init__(self, size: int = 32768, window: int = 256, max_piece_chars: int = 16, noise: float = 1.0,
                 seed: int = 0):
        self.size, self.window, self.max_chars, self.noise = size, window, max_piece_chars, noise
        self.rng = random.Random(seed)
        self.counts: Counter = Counter()
        self.texts: deque[Counter] = deque()

    def add(self, text: str) -> None:
        """Add a text's substrings to the window (dropping the oldest text beyond `window`)."""
        c = substrings(text, self.max_chars)
        self.counts.update(c)
        self.texts.append(c)
        while len(self.texts) > self.window:
            old = self.texts.popleft()
            self.counts.subtract(old)
            for k in [k for k in old if self.counts[k] <= 0]:
                del self.counts[k]

    def sample(self) -> SampledTokenizer:
        """A unigram tokenizer: scores log(count) + noise, top `size` pieces, all characters."""
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        if not self.counts:
            raise ValueError("add text before sampling a tokenizer")
        total = math.log(sum(self.counts.values()))
        gauss = self.rng.gauss
        items = sorted(self.counts.items())  # a fixed order: the same counts give the same tokenizer
        scored = [(math.log(c) - total + self.noise * gauss(0.0, 1.0), s) for s, c in items if len(s) > 1]
        scored.sort(reverse=True)
        chars = sorted(((math.log(c) - total, s) for s, c in items if len(s) == 1), reverse=True)
        budget = max(0, self.size - len(chars) - 256)
        vocab = [(s, score) for score, s in chars + scored[:budget]]
        min_score = min(score for _, score in vocab) - 10.0
        vocab += [(f"<0x{b:02X}>", min_score) for b in range(256)] + [("<unk>", min_score - 10.0)]
        # byte fallback replaces unknown characters; tokenizers still wants an unk id
        tok = Tokenizer(models.Unigram(vocab, unk_id=len(vocab) - 1, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKEN.pattern), behavior="isolated")
        pieces = [s for s, _ in vocab]
        surfaces = [s.encode() for s in pieces[:-257]] + [bytes([b]) for b in range(256)] + [b""]
        return SampledTokenizer(tok, pieces, surfaces)
