"""Segment operations for variable-length words, in pure torch.

Words of different lengths are handled without padding: *flat* (all bytes in one (N, ...)
tensor with a word index per byte; reductions by `index_add`/`scatter_reduce`) for pooling,
and *grouped by length* (`per_length`: words of equal length stacked into dense (n, L, ...)
blocks) for the small per-word transformers. `pack` (pad to the longest word, with a mask) is
the simple reference the tests compare against.
"""

from __future__ import annotations

import torch


def segment_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Word index of every byte: lengths [2, 3] -> [0, 0, 1, 1, 1]."""
    return torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)


def positions_in_segment(lengths: torch.Tensor) -> torch.Tensor:
    """Position of every byte inside its word: lengths [2, 3] -> [0, 1, 0, 1, 2]."""
    starts = torch.cumsum(lengths, 0) - lengths
    return torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(starts, lengths)


def segment_softmax(scores: torch.Tensor, seg: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Softmax of `scores` (N, ...) over the entries of each segment."""
    shape = (n_segments,) + scores.shape[1:]
    index = seg.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    top = torch.full(shape, float("-inf"), dtype=scores.dtype, device=scores.device)
    top = top.scatter_reduce(0, index, scores, reduce="amax", include_self=True)
    e = torch.exp(scores - top.gather(0, index))
    total = torch.zeros(shape, dtype=scores.dtype, device=scores.device).index_add(0, seg, e)
    return e / total.gather(0, index)


def segment_sum(values: torch.Tensor, seg: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Sum of `values` (N, ...) per segment -> (n_segments, ...)."""
    out = torch.zeros((n_segments,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, seg, values)


def pack(flat: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) bytes -> (W, longest, d) words and a (W, longest) mask of real bytes."""
    width = int(lengths.max()) if len(lengths) else 0
    mask = torch.arange(width, device=flat.device).unsqueeze(0) < lengths.unsqueeze(1)
    out = flat.new_zeros((len(lengths), width) + flat.shape[1:])
    out[mask] = flat
    return out, mask


def unpack(packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack`: the real positions, in order, as (N, d)."""
    return packed[mask]


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """For each word length L present, the flat positions (n, L) of the n words that long."""
    starts = torch.cumsum(lengths, 0) - lengths
    groups = []
    for length in torch.unique(lengths).tolist():
        idx = torch.nonzero(lengths == length).squeeze(1)
        groups.append(starts[idx].unsqueeze(1) + torch.arange(length, device=lengths.device))
    return groups


def per_length(fn, flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Apply `fn` to dense (n, L, d) blocks of equal-length words and return its (N, d') output
    rows in the original byte order: per-word work with no padding and no mask."""
    outs, order = [], []
    for pos in length_groups(lengths):
        out = fn(flat[pos])
        outs.append(out.reshape(-1, *out.shape[2:]))
        order.append(pos.reshape(-1))
    order = torch.cat(order)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(outs)[inverse]
