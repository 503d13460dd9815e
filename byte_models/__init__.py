"""tokensurgery.byte_models: byte-level language modelling, two ideas in two subpackages.

- `exact`: a tokenized LM read as an exact next-byte model (`ByteLM`, `ensemble`); no training.
- `trainable`: byte-level models trained here (hierarchical Byte2Word LM, flat byte LM).

The names below are re-exported for convenience; each subpackage's docstring says what it
does not handle. The package registers the `bytes` and `byte-model` CLI commands (plugin.py).
"""

from .exact import ByteEnsemble, ByteLM, ByteScore, ByteStream, CoverEngine, Sampling, ZeroProbability, ensemble
from .trainable import (Byte2Word, ByteTrainConfig, FlatByteLM, FlatConfig, HierarchicalConfig, HierarchicalLM,
                        load_byte_model, score_bytes, split_fixed, split_whitespace, split_words, train_bytes)

__all__ = ["ByteLM", "ByteScore", "ByteStream", "ByteEnsemble", "CoverEngine", "Sampling", "ZeroProbability", "ensemble",
           "split_fixed", "split_whitespace", "split_words", "Byte2Word", "HierarchicalConfig", "HierarchicalLM",
           "FlatByteLM", "FlatConfig", "ByteTrainConfig", "train_bytes", "load_byte_model", "score_bytes"]
