"""Batch-level BPE merging: the hot loop of dynamic tokenization.

Input: the batch's words (a word = the base ids of one segment that merges may not cross),
each unique word once with its count. Repeatedly the most frequent adjacent pair over the
batch (every occurrence counted, overlapping ones too, weighted by the word's count) becomes
a new symbol and is merged everywhere, left to right, as BPE does. Ties go to the smallest
(left, right) pair, so the result does not depend on dict order. Only pairs whose symbols
are in the same *group* merge (e.g. whitespace only with whitespace); a new symbol takes its
parts' group.

Work per merge is proportional to the words that contain the merged pair, not to the batch:
pair counts are kept incrementally, with the words each pair occurs in and a heap of
(count, pair) entries whose stale entries are skipped when popped. `merge_words_naive`
recounts the whole batch after every merge; it is the reference the tests compare with.

Pure Python on purpose: the work is dict and list updates over a few thousand symbols per
batch, where tensors would cost more in overhead than they save.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

Pair = tuple[int, int]


@dataclass
class MergeResult:
    """`words[i]`: input word i after merging (same order as the input); `merges`: (left,
    right, new symbol) in the order they were made; `tokens`: sum of len(word) x count."""

    words: list[list[int]]
    merges: list[tuple[int, int, int]] = field(default_factory=list)
    tokens: int = 0


def _pairs(word: Sequence[int], group: Mapping[int, int]):
    for a, b in zip(word, word[1:]):
        if group[a] == group[b]:
            yield a, b


def _merge_word(word: list[int], a: int, b: int, new: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def merge_words(words: Sequence[Sequence[int]], counts: Sequence[int], next_id: int, group: Mapping[int, int],
                max_merges: int | None = None, min_tokens: int = 0,
                on_merge: Callable[[int, int], None] | None = None) -> MergeResult:
    """Merge until `max_merges` merges are made (None: no limit), the batch is down to
    `min_tokens` tokens, or no pair is left. New symbols are `next_id`, `next_id + 1`, ...

    `group[s]` for every symbol s of the input (new symbols are added to a copy);
    `on_merge(merges_done, tokens)` is called after each merge."""
    if max_merges is not None and max_merges < 0:
        raise ValueError(f"max_merges must be >= 0, got {max_merges}")
    group = dict(group)
    words = [list(w) for w in words]
    tokens = sum(len(w) * c for w, c in zip(words, counts))
    count: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for wi, (w, c) in enumerate(zip(words, counts)):
        for p in _pairs(w, group):
            count[p] += c
            where[p].add(wi)
    heap = [(-c, p) for p, c in count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int, int]] = []
    while (max_merges is None or len(merges) < max_merges) and tokens > min_tokens:
        while heap and (count.get(heap[0][1], 0) != -heap[0][0] or heap[0][0] == 0):
            heapq.heappop(heap)  # stale: the pair's count changed since this entry was pushed
        if not heap:
            break
        _, (a, b) = heapq.heappop(heap)
        new = next_id + len(merges)
        group[new] = group[a]
        changed: set[Pair] = set()
        for wi in sorted(where.pop((a, b))):
            w, c = words[wi], counts[wi]
            merged = _merge_word(w, a, b, new)
            if len(merged) == len(w):
                continue  # the pair left this word in an earlier merge
            for p in _pairs(w, group):
                count[p] -= c
                changed.add(p)
            for p in _pairs(merged, group):
                count[p] += c
                where[p].add(wi)
                changed.add(p)
            tokens -= (len(w) - len(merged)) * c
            words[wi] = merged
        count.pop((a, b), None)
        for p in changed:
            if count.get(p, 0) > 0:
                heapq.heappush(heap, (-count[p], p))
            else:
                count.pop(p, None)
        merges.append((a, b, new))
        if on_merge is not None:
            on_merge(len(merges), tokens)
    return MergeResult(words, merges, tokens)


def merge_words_naive(sequences: Sequence[Sequence[int]], next_id: int, group: Mapping[int, int],
                      max_merges: int | None = None, min_tokens: int = 0) -> MergeResult:
    """The reference: every word occurrence separately, all pairs recounted after each merge."""
    group = dict(group)
    words = [list(w) for w in sequences]
    merges: list[tuple[int, int, int]] = []
    while (max_merges is None or len(merges) < max_merges) and sum(map(len, words)) > min_tokens:
        count: dict[Pair, int] = defaultdict(int)
        for w in words:
            for p in _pairs(w, group):
                count[p] += 1
        if not count:
            break
        best = max(count.values())
        a, b = min(p for p, c in count.items() if c == best)
        new = next_id + len(merges)
        group[new] = group[a]
        words = [_merge_word(w, a, b, new) for w in words]
        merges.append((a, b, new))
    return MergeResult(words, merges, sum(map(len, words)))
