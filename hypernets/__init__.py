"""tokensurgery.hypernets: ZeTT-style hypernetworks that predict embeddings for any tokenizer.

`hypernet_for` / `Hypernet.from_pretrained` (model.py), `train` (train.py), `predict_embeddings`
and `apply` (apply.py); `UnigramSampler` makes the random tokenizers training sees. The
package registers the `hypernet` transplant method and CLI commands (plugin.py).
Not handled: hypernetworks trained elsewhere (ZeTT's Flax checkpoints do not load).
"""

from tokensurgery.corpus import Corpus, bundled_corpus

from .apply import ApplyResult, apply, predict_embeddings
from .model import Hypernet, HypernetConfig, hypernet_for
from .pieces import PieceSplitter
from .sampler import UnigramSampler
from .train import TrainConfig, TrainResult, Trainer, train

__all__ = ["ApplyResult", "Corpus", "Hypernet", "HypernetConfig", "PieceSplitter", "TrainConfig", "TrainResult",
           "Trainer", "UnigramSampler", "apply", "bundled_corpus", "hypernet_for", "predict_embeddings", "train"]
