"""Chunks two tokenizations of the same bytes agree on: the unit of cross-tokenizer distillation.

Two tokenizers split a text differently, so their token probabilities cannot be compared one
by one. They can be compared on *chunks*: spans between byte offsets where both have a token
boundary. Each chunk is covered exactly by whole tokens in both tokenizations, so both models
give it a probability (the product of its tokens' probabilities) conditioned on the same
preceding bytes. Approximate Likelihood Matching (ALM, Minixhofer et al. 2025) trains the
student so that its chunk probabilities match the teacher's.

Not handled: tokenizations that do not spell the bytes exactly (e.g. a prefix space added by
the tokenizer); `token_ends` refuses them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import accumulate

import torch

from .errors import TokenSurgeryError
from .vocabulary import Vocabulary


def token_ends(vocab: Vocabulary, ids: list[int], data: bytes | None = None) -> list[int]:
    """Byte offset where each token ends (cumulative surface lengths); with `data`, checks
    that the tokens spell exactly those bytes."""
    ends = list(accumulate(len(vocab.surface[i]) for i in ids))
    if data is not None and vocab.decode_bytes(ids) != data:
        raise TokenSurgeryError(f"tokenizer {vocab.name or '?'} does not spell the text exactly "
                                f"({ends[-1] if ends else 0} vs {len(data)} bytes); chunk alignment needs exact bytes")
    return ends


@dataclass
class Alignment:
    """`chunk_a[i]` / `chunk_b[j]`: the chunk token i of A / token j of B belongs to;
    `boundaries[c]`: the byte offset where chunk c ends (both tokenizations end a token there)."""

    chunk_a: torch.Tensor  # (len A,) long
    chunk_b: torch.Tensor  # (len B,) long
    boundaries: list[int]

    @property
    def n_chunks(self) -> int:
        return len(self.boundaries)


def align(ends_a: list[int], ends_b: list[int]) -> Alignment:
    """The shared-boundary chunks of two tokenizations of the same bytes, given each token's
    end offset (`token_ends`). A token that covers no bytes (a special) belongs to the chunk that
    ends at its offset (the first chunk at offset 0)."""
    if (ends_a[-1] if ends_a else 0) != (ends_b[-1] if ends_b else 0):
        raise TokenSurgeryError(f"the tokenizations cover different byte lengths ({ends_a[-1] if ends_a else 0} vs "
                                f"{ends_b[-1] if ends_b else 0})")
    shared = sorted(set(ends_a) & set(ends_b) - {0})

    def chunks(ends: list[int]) -> torch.Tensor:  # chunk c covers bytes (shared[c-1], shared[c]]
        return torch.tensor([bisect.bisect_left(shared, e if e else 1) for e in ends], dtype=torch.long)

    return Alignment(chunks(ends_a), chunks(ends_b), shared)


def cut_to_fit(ends_a: list[int], ends_b: list[int], max_a: int, max_b: int) -> int:
    """The largest shared boundary at which A has at most `max_a` tokens and B at most `max_b`
    (0 if none): where to cut a text so that both tokenizations still cover the same bytes."""
    limit = min(ends_a[max_a - 1] if len(ends_a) >= max_a else ends_a[-1] if ends_a else 0,
                ends_b[max_b - 1] if len(ends_b) >= max_b else ends_b[-1] if ends_b else 0)
    shared = set(ends_b)
    return max((e for e in ends_a if e <= limit and e in shared), default=0)
