"""tokensurgery.byte_models: exact byte-level probabilities from tokenized LMs (`ByteLM`,
`ensemble`); Byte2Word / hierarchical encoders come later (see DESIGN.md)."""

from .byte_lm import ByteLM, ByteScore, ByteStream, Sampling, ZeroProbability
from .ensemble import ByteEnsemble, ensemble

__all__ = ["ByteLM", "ByteScore", "ByteStream", "ByteEnsemble", "Sampling", "ZeroProbability", "ensemble"]
