"""Exact byte-level probabilities from a tokenized LM, with no training.

`ByteLM` reads any causal LM and its tokenizer as a next-byte model: `score` and
`distributions` for known text, `generate` / `heal` / `fill_in_middle` for prompts that end
mid-token or mid-character, `stream` for one next-byte distribution per arriving byte;
`ensemble` combines models with different vocabularies byte by byte. `CoverEngine`
(`engine.py`) is the cover-tree machinery underneath, for code that builds its own search.

SentencePiece models that add a word-start space to the text (Llama-2, Mistral v1-v3) are
read with that space as a hidden first byte (`CoverEngine.split_prompt`). Not handled:
WordPiece (it normalises the text), refused with an error.
"""

from .byte_lm import ByteLM, ByteScore, Sampling
from .cover_tree import ZeroProbability
from .engine import CoverEngine
from .ensemble import ByteEnsemble, ensemble
from .stream import ByteStream

__all__ = ["ByteLM", "ByteScore", "ByteStream", "ByteEnsemble", "CoverEngine", "Sampling", "ZeroProbability", "ensemble"]
