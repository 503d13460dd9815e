"""Greedy generation over BASE's vocabulary plus a grown one, with a KV cache and an
approximate-nearest-neighbour output layer.

Each step runs one position through the decoder (KV cache), finds the `candidates` output
rows with the largest inner product with the last hidden state — exactly (one matrix
product over every row) or through a FAISS index (`hnsw`: a graph; `ivf`: k-means cells,
`nprobe` of them searched) — then rescores those candidates exactly and takes the best
(greedy). The chosen token's input row (BASE's, or its grown row) is the next position.
With `grown=None` and `ann="exact"` this is plain greedy decoding.

With a `merger`, the prompts are merged first, as one batch (`generate`: a batch of one, its
own most frequent pairs; `tail` of each prompt's last segments stay in BASE's tokens), and
each prefill reads its prompt with the new tokens' rows (hypernetwork or FVT, from `dm`);
decoding then goes on in BASE's tokens (and the grown ones), as mode A of `score` measures.

Not handled: sampling (greedy only), batched decoding (`generate_many` merges its prompts as one
batch, then decodes them one after another), stopping strings.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.vocabulary import Vocabulary

from .embed import DynamicModel
from .grow import GrownVocabulary
from .merger import BatchMerger
from .score import start_token

ANN = ("exact", "hnsw", "ivf")


class OutputLayer:
    """Top-`candidates` output rows by inner product, exactly or approximately."""

    def __init__(self, rows: torch.Tensor, ann: str = "hnsw", candidates: int = 20, ef_search: int = 128,
                 nprobe: int = 16):
        if ann not in ANN:
            raise TokenSurgeryError(f"ann must be one of {', '.join(ANN)}, got {ann!r}")
        if candidates < 1:
            raise TokenSurgeryError(f"candidates must be at least 1, got {candidates}")
        self.rows = rows.float().contiguous()
        self.ann, self.k = ann, min(candidates, rows.shape[0])
        start = time.perf_counter()
        self.index = None
        if ann != "exact":
            import faiss  # the `dynamic` extra; imported only when asked for

            data = self.rows.numpy()
            d = data.shape[1]
            if ann == "hnsw":
                self.index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efConstruction = 80
                self.index.add(data)
                self.index.hnsw.efSearch = max(ef_search, self.k)
            else:
                cells = max(1, min(4096, int(4 * rows.shape[0] ** 0.5)))
                quantizer = faiss.IndexFlatIP(d)
                self.index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
                self.index.train(data)
                self.index.add(data)
                self.index.nprobe = min(nprobe, cells)
        self.build_seconds = time.perf_counter() - start

    def top(self, h: torch.Tensor) -> torch.Tensor:
        """Candidate ids [k] for one hidden state [hidden]."""
        if self.index is None:
            return torch.topk(self.rows @ h.float(), self.k).indices
        _, ids = self.index.search(h.float().reshape(1, -1).numpy(), self.k)
        ids = torch.from_numpy(ids[0])
        return ids[ids >= 0]


@dataclass
class Generation:
    text: bytes  # the new bytes (may end inside a character)
    tokens: list[int]
    steps: int
    seconds: float  # prefill + decoding (no index build; for a merged prompt add `merge_seconds`)
    prompt_tokens: int = 0  # the prompt in BASE's tokens (after the start token)
    prompt_tokens_read: int = 0  # and as the prefill read it (merged)
    merge_seconds: float = 0.0  # merging the prompts' batch and predicting its rows (the whole batch's)


@torch.no_grad()
def generate(dm: DynamicModel, vocab: Vocabulary, prompt: str, max_new_bytes: int, grown: GrownVocabulary | None = None,
             layer: OutputLayer | None = None, stop_at_eos: bool = True, merger: BatchMerger | None = None,
             merges: int | None = None, reduction: float | None = None, tail: int = 0) -> Generation:
    """Greedy continuation of `prompt` (in BASE's tokens after the start token) until
    `max_new_bytes` bytes or EOS. `layer` ranks rows of BASE's output matrix followed by
    `grown`'s; default: exact over them. With `merger`, the prompt is merged first (`merges`,
    `reduction`, `tail` as in `BatchMerger`; see the module docstring)."""
    return generate_many(dm, vocab, [prompt], max_new_bytes, grown, layer, stop_at_eos, merger, merges, reduction,
                         tail)[0]


@torch.no_grad()
def generate_many(dm: DynamicModel, vocab: Vocabulary, prompts: list[str], max_new_bytes: int,
                  grown: GrownVocabulary | None = None, layer: OutputLayer | None = None, stop_at_eos: bool = True,
                  merger: BatchMerger | None = None, merges: int | None = None, reduction: float | None = None,
                  tail: int = 0, decode: Sequence[int] | None = None) -> list[Generation]:
    """`generate` for several prompts; with `merger` they are merged together as one batch
    (batch-level merging), then each is prefilled and decoded on its own. `decode`: the
    indices of the prompts to continue (default all; every prompt is merged either way)."""
    if max_new_bytes < 1:
        raise TokenSurgeryError(f"max_new_bytes must be at least 1, got {max_new_bytes}")
    if not prompts:
        raise TokenSurgeryError("no prompt to continue")
    if merger is not None and (merger.vocab is not vocab or merger.n_base != dm.n_base):
        raise TokenSurgeryError("the merger was made for another vocabulary than the model's")
    if decode is not None and any(not 0 <= i < len(prompts) for i in decode):
        raise TokenSurgeryError(f"decode: prompt indices are 0..{len(prompts) - 1}, got {list(decode)}")
    n_base = dm.n_base
    out_rows = dm.head.weight.detach()
    in_extra = None
    if grown is not None:
        if grown.n_base != n_base:
            raise TokenSurgeryError(f"the grown vocabulary was made for {grown.n_base:,} rows, the model has {n_base:,}")
        out_rows = torch.cat([out_rows, grown.output.to(out_rows)])
        in_extra = grown.input.to(dm.embed.weight)
    layer = layer or OutputLayer(out_rows, "exact")
    if layer.rows.shape[0] != out_rows.shape[0]:
        raise TokenSurgeryError(f"the output layer has {layer.rows.shape[0]:,} rows, the vocabulary {out_rows.shape[0]:,}")
    eos = vocab.roles.get("eos")
    device = dm.embed.weight.device
    empty = dm.embed.weight[:0]
    prompt_in, merge_seconds = empty, 0.0
    if merger is not None:
        t0 = time.perf_counter()
        merged = merger(list(prompts), merges, reduction, tail=tail)
        bases, reads = merged.base_ids, merged.ids
        prompt_in, _ = dm.rows(merged.new_tokens)
        merge_seconds = time.perf_counter() - t0
    else:
        bases = reads = [vocab.encode(p) for p in prompts]
    decoder = dm.model.base_model
    # transformers 5.x renames `past_key_values` to `cache` (arguments and outputs)
    arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    results = []
    for i in range(len(prompts)) if decode is None else decode:
        base, read = bases[i], reads[i]
        start = time.perf_counter()
        ids = torch.tensor([[start_token(vocab)] + read], device=device)
        out = decoder(inputs_embeds=dm.inputs_embeds(ids, prompt_in), use_cache=True)
        past, h = getattr(out, arg), out.last_hidden_state[0, -1]
        text, tokens, steps = b"", [], 0
        while len(text) < max_new_bytes:
            cands = layer.top(h).to(device)
            scores = out_rows[cands].to(h.dtype) @ h  # a final soft-cap (Gemma) is monotonic: same argmax
            tok = int(cands[int(torch.argmax(scores))])
            steps += 1
            if stop_at_eos and tok == eos:
                break
            tokens.append(tok)
            text += vocab.surface[tok] if tok < n_base else grown.tokens[tok - n_base].surface
            x = torch.tensor([[tok]], device=device)
            emb = dm.inputs_embeds(x, in_extra if in_extra is not None else empty)
            out = decoder(inputs_embeds=emb, use_cache=True, **{arg: past})
            past, h = getattr(out, arg), out.last_hidden_state[0, -1]
        results.append(Generation(text[:max_new_bytes], tokens, steps, time.perf_counter() - start, len(base),
                                  len(read), merge_seconds))
    return results
