"""Applying a trained hypernetwork: embeddings for every id of a new tokenizer, and the
patched checkpoint.

Text tokens (and byte tokens) are predicted from their pieces in blocks of `batch_size`
tokens, so memory stays bounded for 200k+ vocabularies. Special tokens that map to the
base's (by role, then content) copy its rows, as in ZeTT; other specials, unused
placeholders and padding rows get the base's mean row. `apply` also copies the rows of
tokens the base has (`copy_shared`): on the benchmark that beat predicting them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tokensurgery.checkpoint import (NewEmbeddings, check_embeddings_cover, check_output, load_embeddings,
                                     write_patched_checkpoint)
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.inputs import open_model, open_tokenizer, vocabulary_of_folder
from tokensurgery.model_card import model_card
from tokensurgery.output_tokenizer import tokenizer_for_output
from tokensurgery.progress import bar, status
from tokensurgery.vocab_map import VocabMap
from tokensurgery.vocabulary import TEXT_KINDS

from .model import Hypernet
from .pieces import PieceSplitter


@torch.no_grad()
def predict_embeddings(hypernet: Hypernet, vm: VocabMap, n_rows: int | None = None, batch_size: int = 8192,
                       only: list[int] | None = None, copy_shared: bool = False,
                       progress: bool = True) -> NewEmbeddings:
    """Input (and output, when the hypernetwork predicts them) matrices for `vm.target`'s ids.

    `vm` maps the target vocabulary onto the hypernetwork's base vocabulary; `n_rows` pads
    the matrices (e.g. to a multiple of 64) with mean rows; `only` limits the prediction to
    those ids (the other text rows keep the mean row); `copy_shared` copies the base's rows
    for tokens both vocabularies have instead of predicting them."""
    h = hypernet.eval()
    n_rows = max(n_rows or 0, len(vm.target))
    d = h.config.base_hidden_size
    splitter = PieceSplitter(vm.source, h.config.max_pieces, n_rows=h.config.base_vocab_size)
    inp = h.mean_input.cpu().expand(n_rows, d).clone()
    separate = h.head_output is not None or not h.config.base_tied
    out = h.mean_output.cpu().expand(n_rows, d).clone() if separate else None
    copied = {**vm.specials, **(vm.shared if copy_shared else {})}  # target id -> base id
    if copied:
        targets, sources = torch.tensor(list(copied)), torch.tensor(list(copied.values()))
        inp[targets] = h.base_input[sources.to(h.base_input.device)].cpu()
        if out is not None:
            out[targets] = h.base_output[sources.to(h.base_output.device)].cpu()
    text = [t for t, k in enumerate(vm.target.kinds) if k in TEXT_KINDS and vm.target.surface[t] and t not in copied]
    if only is not None:
        keep = set(only)
        text = [t for t in text if t in keep]
    blocks = [text[i : i + batch_size] for i in range(0, len(text), batch_size)]
    for block in bar(blocks, "predicting embeddings", enabled=progress and len(blocks) > 1, unit="block"):
        pieces = splitter.batch([vm.target.surface[t] for t in block])
        rows_in, rows_out = h(pieces)
        idx = torch.tensor(block)
        inp[idx] = rows_in.float().cpu()
        if out is not None:
            out[idx] = rows_out.float().cpu()
    if not torch.isfinite(inp).all() or (out is not None and not torch.isfinite(out).all()):
        raise TokenSurgeryError("the hypernetwork predicted non-finite embeddings")
    return NewEmbeddings(inp, out)


@dataclass
class ApplyResult:
    out: Path
    vocab_map: VocabMap
    rows: int
    predicted: int  # text rows the hypernetwork predicted
    copied: int  # rows copied from BASE (specials, and shared tokens with copy_shared)
    seconds: float  # the rest (unmatched specials, placeholders) are BASE's mean row


def apply(hypernet: str | Path, base: str | Path, tokenizer: str | Path, out: str | Path, batch_size: int = 8192,
          device: str = "cpu", copy_shared: bool = True, force: bool = False, progress: bool = True) -> ApplyResult:
    """Write BASE with TOKENIZER, the embedding rows predicted by the hypernetwork (rows of
    tokens BASE also has are copied unless `copy_shared` is False; that measured better)."""
    start = time.perf_counter()
    check_output(out, force=force)
    base_dir = open_model(base, progress=progress)
    emb = load_embeddings(base_dir)
    net = Hypernet.from_pretrained(hypernet, emb).to(device)
    base_vocab = vocabulary_of_folder(base_dir, name=str(base))
    check_embeddings_cover(emb, len(base_vocab), f"base {base}")
    with open_tokenizer(tokenizer, progress=progress) as source:
        target = source.vocab
        vm = VocabMap.build(base_vocab, target)
        with status(f"predicting {len(target):,} embeddings", progress):
            new = predict_embeddings(net, vm, batch_size=batch_size, copy_shared=copy_shared, progress=progress)
        tok_src, note = tokenizer_for_output(vm, source.files)
        if tok_src != source.files:
            source.temporary.append(tok_src)
        special_ids = {role: target.roles.get(role) for role in ("bos", "eos", "pad")}
        n_copied = len(vm.specials) + (len(vm.shared) if copy_shared else 0)
        copied = set(vm.specials) | (set(vm.shared) if copy_shared else set())
        n_predicted = sum(1 for t, k in enumerate(target.kinds)
                          if k in TEXT_KINDS and target.surface[t] and t not in copied)
        params = {"rows": f"{new.input.shape[0]:,}", "predicted": f"{n_predicted:,}",
                  "specials copied": f"{len(vm.specials):,}",
                  "shared copied": f"{len(vm.shared) if copy_shared else 0:,}", "output head": new.output is not None,
                  "hypernetwork config": net.config.__dict__}
        card = model_card(f"{Path(str(base)).name} with the tokenizer of {Path(str(tokenizer)).name}", str(base),
                          {"base": str(base), "tokenizer": str(tokenizer), "hypernetwork": str(hypernet)},
                          "tokensurgery hypernet apply", params, notes=note)
        with status(f"writing {out}", progress):
            write_patched_checkpoint(base_dir, out, new, tok_src, special_ids, card, force=force,
                                     extra_inputs=[Path(str(hypernet))])
    return ApplyResult(Path(out), vm, new.input.shape[0], n_predicted, n_copied, time.perf_counter() - start)
