"""Bits per byte: the one quality figure that compares models with different tokenizers.

bits/byte = (sum over the scored tokens of -log2 p(token | context)) / (their UTF-8 bytes).
`Score` is the toolkit's one score type (subword models here, byte-level models in
`byte_models`). `score_text` cuts a token sequence into windows of `window` tokens that
advance by `stride`; every token is scored exactly once, and every scored token after the
first window sees at least `window - stride` tokens of context. A model whose tokenizer adds
BOS (`Vocabulary.bos_added`) gets BOS at the start of every window, so every token is scored.
Without one, the text's first token has no context: it is not scored and its bytes do not
count, and windows overlap by at least one token so that each window's first token was
already scored by the window before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TokenSurgeryError
from .progress import bar
from .vocabulary import Vocabulary


@dataclass
class Score:
    """Bits a model spends on a text, the bytes they cover and the positions it used."""

    name: str = "text"
    n_bytes: int = 0  # bytes scored
    n_tokens: int = 0  # positions the model took for them (tokens; words or kept bytes for byte models)
    bits: float = 0.0

    @property
    def bits_per_byte(self) -> float:
        return self.bits / max(self.n_bytes, 1)

    @property
    def tokens_per_byte(self) -> float:
        return self.n_tokens / max(self.n_bytes, 1)

    positions_per_byte = tokens_per_byte  # the byte models' name for it

    def __add__(self, other: "Score") -> "Score":
        return Score("overall", self.n_bytes + other.n_bytes, self.n_tokens + other.n_tokens, self.bits + other.bits)

    def as_dict(self) -> dict:
        return {"text": self.name, "bytes": self.n_bytes, "tokens": self.n_tokens, "bits": self.bits,
                "bits_per_byte": self.bits_per_byte, "tokens_per_byte": self.tokens_per_byte}


def total(scores: list[Score], name: str = "overall") -> Score:
    """All scores pooled: bits over bytes of every text together."""
    out = Score(name)
    for s in scores:
        out = out + s
    out.name = name
    return out


def load_model(folder: str | Path, dtype: str = "float32", device: str = "cpu"):
    """A transformers causal LM from a local folder, in eval mode (no remote code)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 1-second "Loading weights" bar is noise in our output
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), trust_remote_code=False)
    except Exception as e:
        raise TokenSurgeryError(f"transformers cannot load the model in {folder}: {str(e).splitlines()[0][:200]}") from None
    return model.to(device).eval()


def load_causal_lm(folder: str | Path, dtype: str = "float32", device: str = "cpu"):
    """`load_model` and the `Vocabulary` of the folder's tokenizer, checked to fit the model."""
    from .inputs import vocabulary_of_folder

    model = load_model(folder, dtype, device)
    vocab = vocabulary_of_folder(Path(folder))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(vocab) > rows:
        raise TokenSurgeryError(f"{folder}: the embedding matrix has {rows} rows but the tokenizer has {len(vocab)} tokens")
    return model, vocab


def windows(n_tokens: int, window: int, stride: int, bos: bool) -> list[tuple[int, int, int]]:
    """(start, end, scored) per window over `n_tokens` ids: the window feeds ids[start:end]
    (after BOS when `bos`) and scores its last `scored` ids. Every id is scored exactly once,
    except the first without BOS (see the module docstring)."""
    if window < (1 if bos else 2):
        raise TokenSurgeryError(f"window must be at least {1 if bos else 2} tokens, got {window}")
    if stride <= 0 or stride > window:
        raise TokenSurgeryError(f"stride must be in 1..window ({window}), got {stride}")
    if not bos:
        stride = min(stride, window - 1)  # each window's first token must have been scored before
    spans, done, begin = [], 0 if bos else 1, 0
    while done < n_tokens:
        end = min(begin + window, n_tokens)
        spans.append((begin, end, end - done))
        done, begin = end, begin + stride
    return spans


@torch.no_grad()
def token_bits(model, vocab: Vocabulary, ids: list[int], window: int = 256, stride: int = 128, batch_size: int = 8,
               name: str = "text", progress: bool = True) -> torch.Tensor:
    """Bits each of `ids` costs under `model` (float64, one per id; NaN for the first id when
    `vocab` adds no BOS: it has no context and is not scored). Windows as in `windows`."""
    bos = vocab.bos_added
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    if ids and max(ids) >= vocab_rows:
        raise TokenSurgeryError(f"tokenizer produced id {max(ids)} but the model has only {vocab_rows} embedding rows")
    spans = windows(len(ids), window, stride, bos is not None)
    device = next(model.parameters()).device
    out_rows = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else vocab_rows
    # keep the logits of one batch near 1 GB: large vocabularies (Gemma: 262k) get smaller batches
    batch_size = max(1, min(batch_size, int(2.5e8 // (out_rows * (max(stride, 1) + 1)))))
    out = torch.full((len(ids),), float("nan"), dtype=torch.float64)
    batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    prefix = [bos] if bos is not None else []
    for batch in bar(batches, f"scoring {name}", enabled=progress and len(batches) > 1):
        rows = [prefix + ids[s:e] for s, e, _ in batch]
        scored = [n for _, _, n in batch]
        width, keep = max(map(len, rows)), max(scored) + 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):  # left padding: every row's scored tokens end at `width`
            x[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        x, mask, positions = x.to(device), mask.to(device), positions.to(device)
        try:
            logits = model(input_ids=x, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        except TypeError:  # older architectures without logits_to_keep
            logits = model(input_ids=x, attention_mask=mask, position_ids=positions).logits[:, -keep:]
        logits = logits[:, -keep:-1].float()
        targets = x[:, width - keep + 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                reduction="none").view(len(rows), -1)
        for r, ((_, e, _), n) in enumerate(zip(batch, scored)):
            out[e - n : e] = nll[r, nll.shape[1] - n:].double().cpu() / math.log(2)
    return out


def score_text(model, vocab: Vocabulary, text: str, name: str = "text", window: int = 256, stride: int = 128,
               batch_size: int = 8, progress: bool = True) -> Score:
    """Bits per byte of `text` under `model`, tokenized by `vocab` (see the module docstring)."""
    ids = vocab.encode(text)
    bits = token_bits(model, vocab, ids, window, stride, batch_size, name, progress)
    n_bytes = len(text.encode("utf-8")) - (len(vocab.surface[ids[0]]) if ids and vocab.bos_added is None else 0)
    scored = bits[~bits.isnan()]
    return Score(name, n_bytes, len(scored), scored.sum().item())


def score_files(model, vocab: Vocabulary, files: list[Path], window: int = 256, stride: int = 128,
                max_bytes: int | None = None, progress: bool = True) -> list[Score]:
    """Score each file (optionally only its first `max_bytes` bytes); the last entry is the total."""
    scores = []
    for f in files:
        text = read_text_file(f, max_bytes)
        scores.append(score_text(model, vocab, text, name=Path(f).name, window=window, stride=stride, progress=progress))
    return scores + [total(scores)]


def read_text_file(path: str | Path, max_bytes: int | None = None) -> str:
    """UTF-8 text of a file, CRLF normalised, cut at a character boundary to `max_bytes`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenSurgeryError(f"text file not found: {path}") from None
    except IsADirectoryError:
        raise TokenSurgeryError(f"{path} is a folder, not a text file") from None
    if max_bytes is not None:
        data = data[:max_bytes]
    try:
        text = data.decode("utf-8") if max_bytes is None else data.decode("utf-8", "ignore")
    except UnicodeDecodeError as e:
        raise TokenSurgeryError(f"{path} is not UTF-8 text (invalid byte at offset {e.start})") from None
    return text.replace("\r\n", "\n")
