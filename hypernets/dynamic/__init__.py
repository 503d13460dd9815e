"""Dynamic batch-level BPE merging: shorter sequences per batch, new tokens embedded by the
hypernetwork (Feher, Vulić, Minixhofer et al., "Retrofitting (Large) Language Models with
Dynamic Tokenization", ACL 2025).

- merger.py: `BatchMerger` — a batch of texts in BASE's tokenization, merged (`MergedBatch`).
- embed.py: `DynamicModel` — BASE's rows for BASE's tokens, hypernetwork (or FVT) rows for
  the batch's new tokens through an LRU cache, and the model run over both.
- score.py: tokens per byte, bits per byte (prefill mode A, whole-text mode B) and speed.
- grow.py, generate.py: a large vocabulary grown from BASE's (rows predicted once, saved) and
  generation over it with an approximate-nearest-neighbour output layer and a KV cache; the
  prompts may be merged first (their prefill reads the new tokens' rows).
- cli.py: `tokensurgery dynamic score|grow|generate`.

The hypernetwork for merged batches is trained by `hypernets/train.py`
(`--tokenizers merges`; `--objective prefill|both` trains for mode A).
"""

from .embed import CacheStats, DynamicModel
from .merger import BOUNDARIES, BatchMerger, MergedBatch, NewToken
from .score import DynamicScore, chunk_text, context_cut, score_batch, score_texts, start_token

__all__ = ["BOUNDARIES", "BatchMerger", "CacheStats", "DynamicModel", "DynamicScore", "MergedBatch", "NewToken",
           "chunk_text", "context_cut", "score_batch", "score_texts", "start_token"]
