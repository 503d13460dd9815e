"""Byte-level models of their own, trained here: the word splitter (`split_words`), the
Byte2Word encoder and hierarchical byte LM (`HierarchicalLM`, from scratch or retrofitted onto
a subword model's transformer), the flat byte baseline with an optional MrT5 delete gate
(`FlatByteLM`), their trainer (`train_bytes`) and their scorer (`score_bytes`).

Not handled: generation with a KV cache (each step re-runs the window), pretrained byte
models from elsewhere (ByT5, MegaByte checkpoints) — only folders these classes saved load.
"""

from .flat import FlatByteLM, FlatConfig
from .hierarchical import Byte2Word, HierarchicalConfig, HierarchicalLM
from .score import score_bytes
from .splitter import split_fixed, split_whitespace, split_words
from .train import ByteTrainConfig, load_byte_model, train_bytes

__all__ = ["Byte2Word", "ByteTrainConfig", "FlatByteLM", "FlatConfig", "HierarchicalConfig", "HierarchicalLM",
           "load_byte_model", "score_bytes", "split_fixed", "split_whitespace", "split_words", "train_bytes"]
