"""Bits per byte: the one quality figure that compares models with different tokenizers.

bits/byte = (sum over the text's tokens of -log2 p(token | context)) / (UTF-8 bytes of text).
The text is cut into windows of `window` tokens that advance by `stride`, so every scored
token (after the first window) sees at least `window - stride` tokens of context. A model
whose tokenizer adds BOS gets BOS at the start of every window; for a model without one the
first token of the text has no context and is not scored (its bytes still count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TokenSurgeryError
from .progress import bar


@dataclass
class TextScore:
    """Bits per byte of one text under one model."""

    name: str
    n_bytes: int
    n_tokens: int
    bits: float

    @property
    def bits_per_byte(self) -> float:
        return self.bits / max(self.n_bytes, 1)

    @property
    def tokens_per_byte(self) -> float:
        return self.n_tokens / max(self.n_bytes, 1)

    def __add__(self, other: "TextScore") -> "TextScore":
        return TextScore("overall", self.n_bytes + other.n_bytes, self.n_tokens + other.n_tokens, self.bits + other.bits)


def load_causal_lm(folder: str | Path, dtype: str = "float32", device: str = "cpu"):
    """A transformers causal LM and its tokenizer from a local folder (no remote code)."""
    from transformers import AutoModelForCausalLM

    from .assets import hf_tokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 1-second "Loading weights" bar is noise in our output
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), trust_remote_code=False)
    except Exception as e:
        raise TokenSurgeryError(f"transformers cannot load the model in {folder}: {str(e).splitlines()[0][:200]}") from None
    model.to(device).eval()
    tokenizer = hf_tokenizer(Path(folder))
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise TokenSurgeryError(f"{folder}: the embedding matrix has {rows} rows but the tokenizer has {len(tokenizer)} tokens")
    return model, tokenizer


def bos_id(tokenizer) -> int | None:
    """The id the tokenizer puts in front of a text for its model, if any (Gemma: <bos>)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(plain) and with_special[0] != plain[0] and with_special[0] in tokenizer.all_special_ids:
        return with_special[0]
    return None


@torch.no_grad()
def score_text(model, tokenizer, text: str, name: str = "text", window: int = 256, stride: int = 128,
               batch_size: int = 8, progress: bool = True) -> TextScore:
    """Bits per byte of `text` under `model` (see the module docstring for the windows)."""
    if stride <= 0 or stride > window:
        raise TokenSurgeryError(f"stride must be in 1..window ({window}), got {stride}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_bytes = len(text.encode("utf-8"))
    bos = bos_id(tokenizer)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    if ids and max(ids) >= vocab_rows:
        raise TokenSurgeryError(f"tokenizer produced id {max(ids)} but the model has only {vocab_rows} embedding rows")
    # windows: (start, end, number of scored tokens at the end)
    spans, prev_end, begin = [], 0, 0
    while prev_end < len(ids):
        end = min(begin + window, len(ids))
        spans.append((begin, end, end - prev_end))
        prev_end, begin = end, begin + stride
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else vocab_rows
    # keep the logits of one batch near 1 GB: large vocabularies (Gemma: 262k) get smaller batches
    batch_size = max(1, min(batch_size, int(2.5e8 // (vocab * (stride + 1)))))
    bits = 0.0
    batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    prefix = [bos] if bos is not None else []
    for batch in bar(batches, f"scoring {name}", enabled=progress and len(batches) > 1):
        rows = [prefix + ids[s:e] for s, e, _ in batch]
        scored = [min(n_new, len(row) - 1) for row, (_, _, n_new) in zip(rows, batch)]
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
        for r, n in enumerate(scored):
            bits += nll[r, nll.shape[1] - n:].sum().item() / math.log(2)
    return TextScore(name, n_bytes, len(ids), bits)


def score_files(model, tokenizer, files: list[Path], window: int = 256, stride: int = 128, max_bytes: int | None = None,
                progress: bool = True) -> list[TextScore]:
    """Score each file (optionally only its first `max_bytes` bytes); the last entry is the total."""
    scores = []
    for f in files:
        text = read_text_file(f, max_bytes)
        scores.append(score_text(model, tokenizer, text, name=Path(f).name, window=window, stride=stride, progress=progress))
    total = TextScore("overall", 0, 0, 0.0)
    for s in scores:
        total = total + s
    return scores + [total]


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
