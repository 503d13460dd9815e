"""Scoring a model under dynamic merging: tokens per byte, bits per byte in two modes, speed.

Each batch of texts is merged (`BatchMerger`) and run through `DynamicModel`; every sequence
starts with the same start token (BASE's BOS when its tokenizer adds one, else its `bos` or
`eos` token), so every byte of every text is scored, by BASE and by the dynamic model alike.

- Mode A (prefill, exact): each text is cut at the segment boundary nearest its middle byte;
  the batch's *contexts* are merged, the continuation stays in BASE's tokenization and is
  scored with BASE's softmax. Comparable with BASE on the same continuation bytes. With
  `tail=N` the last N segments of each context stay in BASE's tokens (where the continuation
  starts); they count towards `reduction`, so the rest of the context merges more.
- Mode B (whole text): the whole text in the dynamic segmentation, every token scored with a
  softmax over BASE's vocabulary plus the batch's new tokens. Several segmentations of the
  same bytes share the mass, so this is an upper bound on the model's bits for those bytes.

Speed: the decoder's forward over the merged batch (right-padded) against the plain batch of
the same texts, with merge and row-prediction time kept apart. One run per batch; the
benchmark repeats and alternates.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

import torch

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.progress import bar
from tokensurgery.vocabulary import Vocabulary

from .embed import DynamicModel
from .merger import BatchMerger, MergedBatch


@dataclass
class DynamicScore:
    """Totals over the texts scored (add two with `+`)."""

    texts: int = 0
    bytes: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    limit: int = 0
    merges: int = 0
    new_tokens: int = 0
    bytes_a: int = 0  # continuation bytes (mode A)
    context_tokens_before: int = 0  # mode A's contexts in BASE's tokens, and merged
    context_tokens_after: int = 0
    bits_a: float = 0.0
    base_bits_a: float = 0.0
    bits_b: float = 0.0
    base_bits_b: float = 0.0
    merge_seconds: float = 0.0
    rows_seconds: float = 0.0
    forward_seconds: float = 0.0
    base_forward_seconds: float = 0.0

    def __add__(self, other: "DynamicScore") -> "DynamicScore":
        return DynamicScore(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def reduction(self) -> float:
        return 1 - self.tokens_after / max(self.tokens_before, 1)

    @property
    def reduction_to_limit(self) -> float:
        room = self.tokens_before - self.limit
        return (self.tokens_before - self.tokens_after) / room if room > 0 else 0.0

    def summary(self) -> dict:
        b, ba = max(self.bytes, 1), max(self.bytes_a, 1)
        net = self.merge_seconds + self.rows_seconds + self.forward_seconds
        return {**asdict(self),
                "tokens_per_byte_before": self.tokens_before / b, "tokens_per_byte_after": self.tokens_after / b,
                "reduction": self.reduction, "reduction_to_limit": self.reduction_to_limit,
                "context_reduction": 1 - self.context_tokens_after / max(self.context_tokens_before, 1),
                "bpb_a": self.bits_a / ba, "base_bpb_a": self.base_bits_a / ba,
                "bpb_b": self.bits_b / b, "base_bpb_b": self.base_bits_b / b,
                "rel_a": self.bits_a / self.base_bits_a - 1 if self.base_bits_a else 0.0,
                "rel_b": self.bits_b / self.base_bits_b - 1 if self.base_bits_b else 0.0,
                "prefill_bytes_per_s": self.bytes / net if net else 0.0,
                "base_prefill_bytes_per_s": self.bytes / self.base_forward_seconds if self.base_forward_seconds else 0.0,
                "merge_share_of_forward": self.merge_seconds / self.forward_seconds if self.forward_seconds else 0.0}


def start_token(vocab: Vocabulary) -> int:
    """The token every scored sequence starts with (see the module docstring)."""
    for tok in (vocab.bos_added, vocab.roles.get("bos"), vocab.roles.get("eos")):
        if tok is not None:
            return tok
    raise TokenSurgeryError(f"{vocab.name or 'the tokenizer'} has no BOS or EOS token to start sequences with")


def chunk_text(text: str, n_bytes: int) -> list[str]:
    """`text` cut into pieces of at most `n_bytes` UTF-8 bytes, each cut before a whitespace
    character where one lies in the last half of the piece (else at a character boundary)."""
    if n_bytes < 8:
        raise TokenSurgeryError(f"chunks must hold at least 8 bytes, got {n_bytes}")
    data, out, i = text.encode("utf-8"), [], 0
    while i < len(data):
        end = min(i + n_bytes, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1  # never inside a character
        if end < len(data):
            cut = max(data.rfind(c, i + n_bytes // 2, end) for c in (b" ", b"\n", b"\t"))
            end = cut if cut > i else end
        out.append(data[i:end].decode("utf-8"))
        i = end
    return [t for t in out if t]


def context_cut(segments: list[list[int]], vocab: Vocabulary, at: float = 0.5) -> int:
    """How many of a text's segments form its context (mode A): the segment boundary nearest
    the byte at fraction `at` of the text (at least one segment on each side when there are
    two). Scoring cuts at the middle; training for mode A draws `at`."""
    sizes = [len(vocab.decode_bytes(s)) for s in segments]
    want, acc, best, best_gap = sum(sizes) * at, 0, 1, math.inf
    for k in range(1, len(segments)):
        acc += sizes[k - 1]
        if abs(acc - want) < best_gap:
            best, best_gap = k, abs(acc - want)
    return min(best, len(segments))


def _pad(rows: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _bits(dm: DynamicModel, hidden: torch.Tensor, rows: list[list[int]], new_out: torch.Tensor | None,
          first: list[int]) -> list[float]:
    """Per row: bits of its tokens from position `first[r]` on (targets), one row at a time so
    that the logits of a 262k vocabulary stay small."""
    out = []
    for r, row in enumerate(rows):
        n = len(row)
        if first[r] >= n:
            out.append(0.0)
            continue
        logits = dm.logits(hidden[r, first[r] - 1 : n - 1], new_out).float()
        target = torch.tensor(row[first[r]:], device=logits.device)
        out.append(torch.nn.functional.cross_entropy(logits, target, reduction="sum").item() / math.log(2))
    return out


@torch.no_grad()
def score_batch(dm: DynamicModel, merger: BatchMerger, texts: list[str], merges: int | None = None,
                reduction: float | None = None, per_text: bool = False, tail: int = 0):
    """Merge, embed, run and score one batch (see the module docstring): its `DynamicScore`;
    with `per_text`, also one per text (without the batch's times, merges and new tokens)."""
    vocab, device = merger.vocab, dm.embed.weight.device
    start = start_token(vocab)
    merged: MergedBatch = merger(texts, merges, reduction)
    rows_before = dm.seconds
    new_in, new_out = dm.rows(merged.new_tokens)
    rows_seconds = dm.seconds - rows_before
    empty = new_in[:0]

    plain = [[start] + ids for ids in merged.base_ids]
    t0 = time.perf_counter()
    x, mask = _pad(plain, device)
    h_plain = dm.hidden(x, mask, empty)
    base_seconds = time.perf_counter() - t0
    dyn = [[start] + ids for ids in merged.ids]
    t0 = time.perf_counter()
    x, mask = _pad(dyn, device)
    h_dyn = dm.hidden(x, mask, new_in)
    dyn_seconds = time.perf_counter() - t0

    base_b = _bits(dm, h_plain, plain, None, [1] * len(plain))
    bits_b = _bits(dm, h_dyn, dyn, new_out, [1] * len(dyn))

    # mode A: contexts merged over the batch, continuations in BASE's tokens
    cuts = [context_cut(segs, vocab) for segs in merged.segments]
    ctx = merger.merge_segments([segs[:k] for segs, k in zip(merged.segments, cuts)], merges, reduction, tail=tail)
    ctx_in, _ = dm.rows(ctx.new_tokens)
    conts = [[t for s in segs[k:] for t in s] for segs, k in zip(merged.segments, cuts)]
    seq_a = [[start] + c + cont for c, cont in zip(ctx.ids, conts)]
    x, mask = _pad(seq_a, device)
    h_a = dm.hidden(x, mask, ctx_in)
    bits_a = _bits(dm, h_a, seq_a, None, [1 + len(c) for c in ctx.ids])
    base_a = _bits(dm, h_plain, plain, None, [1 + len(b) - len(cont) for b, cont in zip(merged.base_ids, conts)])

    parts = [DynamicScore(texts=1, bytes=len(vocab.decode_bytes(base)), tokens_before=len(base), tokens_after=len(ids),
                          limit=sum(merger.runs(tuple(s)) for s in segs), bytes_a=len(vocab.decode_bytes(cont)),
                          context_tokens_before=len(base) - len(cont), context_tokens_after=len(c),
                          bits_a=ba, base_bits_a=bba, bits_b=bb, base_bits_b=bbb)
             for base, ids, segs, cont, c, ba, bba, bb, bbb in
             zip(merged.base_ids, merged.ids, merged.segments, conts, ctx.ids, bits_a, base_a, bits_b, base_b)]
    total = sum(parts, DynamicScore(merges=merged.merges, new_tokens=len(merged.new_tokens),
                                    merge_seconds=merged.seconds, rows_seconds=rows_seconds,
                                    forward_seconds=dyn_seconds, base_forward_seconds=base_seconds))
    return (total, parts) if per_text else total


def score_texts(dm: DynamicModel, merger: BatchMerger, texts: list[str], batch_size: int = 32,
                merges: int | None = None, reduction: float | None = None, name: str = "texts",
                progress: bool = True, tail: int = 0) -> DynamicScore:
    """`score_batch` over consecutive batches of `batch_size` texts, summed."""
    if batch_size < 1:
        raise TokenSurgeryError(f"batch size must be at least 1, got {batch_size}")
    if not texts:
        raise TokenSurgeryError(f"{name}: no text to score")
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    total = DynamicScore()
    for batch in bar(batches, f"scoring {name}", enabled=progress and len(batches) > 1, unit="batch"):
        total = total + score_batch(dm, merger, batch, merges, reduction, tail=tail)
    return total
