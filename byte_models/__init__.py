"""tokensurgery.byte_models: exact byte-level probabilities from tokenized LMs (`ByteLM`,
`ensemble`), and byte-level models of their own: the word splitter (`split_words`), the
Byte2Word encoder and hierarchical byte LM (`HierarchicalLM`, retrofittable onto a subword
model), the flat byte baseline with an optional MrT5 delete gate (`FlatByteLM`), their trainer
(`train_bytes`) and scoring (`score_bytes`)."""

from .byte_lm import ByteLM, ByteScore, ByteStream, Sampling, ZeroProbability
from .ensemble import ByteEnsemble, ensemble
from .evaluate import score_bytes
from .flat import FlatByteLM, FlatConfig
from .hierarchical import Byte2Word, HierarchicalConfig, HierarchicalLM
from .splitter import split_fixed, split_whitespace, split_words
from .train import ByteTrainConfig, load_byte_model, train_bytes

__all__ = ["ByteLM", "ByteScore", "ByteStream", "ByteEnsemble", "Sampling", "ZeroProbability", "ensemble",
           "split_fixed", "split_whitespace", "split_words", "Byte2Word", "HierarchicalConfig", "HierarchicalLM",
           "FlatByteLM", "FlatConfig", "ByteTrainConfig", "train_bytes", "load_byte_model", "score_bytes"]
