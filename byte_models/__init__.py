"""tokensurgery.byte_models: exact byte-level probabilities from tokenized LMs (`ByteLM`,
`ensemble`) and the word splitter for hierarchical byte models (`split_words`); the
Byte2Word / hierarchical encoders themselves come later (see DESIGN.md)."""

from .byte_lm import ByteLM, ByteScore, ByteStream, Sampling, ZeroProbability
from .ensemble import ByteEnsemble, ensemble
from .splitter import split_fixed, split_whitespace, split_words

__all__ = ["ByteLM", "ByteScore", "ByteStream", "ByteEnsemble", "Sampling", "ZeroProbability", "ensemble",
           "split_fixed", "split_whitespace", "split_words"]
