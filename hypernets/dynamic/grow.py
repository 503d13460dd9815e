"""A large vocabulary grown from BASE's, for generation with dynamic tokens.

`tokenizers`' BpeTrainer learns a byte-level BPE vocabulary of `size` tokens on a corpus
(GPT-2's pre-tokenizer: words with their leading space, numbers, punctuation runs); every
learned token BASE does not have becomes a new token, spelled in BASE's ids
(`Vocabulary.decompose`), and gets input and output rows once (hypernetwork, or FVT). The
result is saved as `grown.json` (surfaces and parts) + `grown.safetensors` (rows).

Not handled: tokens BASE cannot spell exactly (dropped), and growing from BASE's own merges
(the trainer starts from bytes; tokens it shares with BASE are simply not new).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file

from tokensurgery.checkpoint import save_tensors
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.vocabulary import BYTE_TO_CHAR, Vocabulary

from ..model import fingerprint
from .embed import DynamicModel
from .merger import NewToken

TOKENS = "grown.json"
ROWS = "grown.safetensors"
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


@dataclass
class GrownVocabulary:
    """BASE's vocabulary plus `tokens` (id `n_base + j` is `tokens[j]`) and their rows."""

    tokens: list[NewToken]
    input: torch.Tensor  # [len(tokens), hidden], as stored in the embedding matrix (unscaled)
    output: torch.Tensor
    n_base: int
    base_name: str = ""
    seconds: float = 0.0
    base_fingerprint: list[float] | None = None  # statistics of the model's output matrix (hypernets.model.fingerprint)

    def __len__(self) -> int:
        return self.n_base + len(self.tokens)

    def surface(self, vocab: Vocabulary, i: int) -> bytes:
        return vocab.surface[i] if i < self.n_base else self.tokens[i - self.n_base].surface

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"n_base": self.n_base, "base_name": self.base_name, "seconds": self.seconds,
                "base_fingerprint": self.base_fingerprint,
                "tokens": [[base64.b64encode(t.surface).decode(), list(t.parts)] for t in self.tokens]}
        (folder / TOKENS).write_text(json.dumps(meta) + "\n")
        save_tensors({"input": self.input.contiguous(), "output": self.output.contiguous()}, folder / ROWS)
        return folder

    @classmethod
    def load(cls, folder: str | Path, n_base: int | None = None, fingerprint: list[float] | None = None) -> "GrownVocabulary":
        """Read a saved vocabulary; `n_base` and `fingerprint` (of the model it is for) are checked."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / TOKENS).read_text())
            rows = load_file(str(folder / ROWS))
        except FileNotFoundError as e:
            raise TokenSurgeryError(f"{folder} is not a grown vocabulary (missing {Path(e.filename).name})") from None
        except (json.JSONDecodeError, OSError) as e:
            raise TokenSurgeryError(f"{folder}: the grown vocabulary is corrupt ({e})") from None
        if n_base is not None and meta["n_base"] != n_base:
            raise TokenSurgeryError(f"{folder} was grown for a model with {meta['n_base']:,} embedding rows, "
                                    f"this one has {n_base:,}")
        saved = meta.get("base_fingerprint")
        if fingerprint is not None and saved is not None and \
                any(abs(a - b) > 1e-3 * max(1.0, abs(b)) for a, b in zip(fingerprint, saved)):
            raise TokenSurgeryError(f"{folder} was grown for another model ({meta.get('base_name') or 'unnamed'}): "
                                    "its output matrix differs")
        tokens = [NewToken(base64.b64decode(s), tuple(p)) for s, p in meta["tokens"]]
        if rows["input"].shape[0] != len(tokens) or rows["output"].shape[0] != len(tokens):
            raise TokenSurgeryError(f"{folder}: {len(tokens):,} tokens but {rows['input'].shape[0]:,} rows")
        return cls(tokens, rows["input"], rows["output"], meta["n_base"], meta.get("base_name", ""),
                   meta.get("seconds", 0.0), saved)


def learned_surfaces(texts: Iterable[str], size: int) -> list[bytes]:
    """Surface bytes of a byte-level BPE vocabulary of `size` tokens trained on `texts`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return [bytes(CHAR_TO_BYTE[c] for c in piece) for piece, _ in vocab]


@torch.no_grad()
def grow(dm: DynamicModel, vocab: Vocabulary, texts: Iterable[str], size: int, name: str = "",
         block: int = 16384) -> GrownVocabulary:
    """Learn `size` tokens on `texts` and give the new ones rows through `dm` (its hypernetwork
    or FVT); rows are computed in blocks of `block` tokens and not kept in `dm`'s cache."""
    start = time.perf_counter()
    if size < 1:
        raise TokenSurgeryError(f"the grown vocabulary needs at least 1 token, got {size}")
    known = vocab.by_bytes
    tokens = []
    for surface in learned_surfaces(texts, size):
        if surface in known or not surface:
            continue
        parts = vocab.decompose(surface)
        if len(parts) > 1 and vocab.decode_bytes(parts) == surface and max(parts) < dm.n_base:
            tokens.append(NewToken(surface, tuple(parts)))
    if not tokens:
        raise TokenSurgeryError("the corpus taught no token BASE does not already have")
    rows_in, rows_out = [], []
    capacity = dm.capacity
    for i in range(0, len(tokens), block):
        dm.capacity = 0  # predict, do not cache: these rows are kept here
        a, b = dm.rows(tokens[i : i + block])
        rows_in.append(a.cpu())
        rows_out.append(b.cpu())
    dm.capacity = capacity
    dm._cache.clear()
    return GrownVocabulary(tokens, torch.cat(rows_in), torch.cat(rows_out), dm.n_base, name,
                           time.perf_counter() - start, fingerprint(dm.head.weight.detach().float().cpu()))
