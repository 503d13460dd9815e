"""tokensurgery.hypernets: ZeTT-style hypernetworks that predict embeddings for any tokenizer.

`hypernet_for` / `Hypernet.from_pretrained` (model.py), `train` (train.py), `predict_embeddings`
and `apply` (apply.py); `UnigramSampler` makes the random tokenizers training sees.
"""

from .apply import ApplyResult, apply, open_tokenizer, predict_embeddings
from tokensurgery.corpus import Corpus, bundled_corpus
from .model import Hypernet, HypernetConfig, hypernet_for
from .pieces import PieceSplitter
from .sampler import UnigramSampler
from .train import TrainConfig, TrainResult, Trainer, train

__all__ = ["ApplyResult", "Corpus", "Hypernet", "HypernetConfig", "PieceSplitter", "TrainConfig", "TrainResult",
           "Trainer", "UnigramSampler", "apply", "bundled_corpus", "hypernet_for", "open_tokenizer",
           "predict_embeddings", "train"]
