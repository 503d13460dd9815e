"""Embedding rows for the tokens a batch made, and the model run over BASE's vocabulary plus them.

Tokens BASE has keep BASE's rows exactly (with no merges the logits are the plain model's).
A new token's input and output rows come from a hypernetwork trained for BASE, fed the BASE
ids the token joins (at most its `max_pieces`); without one, from FVT: the mean of those
ids' BASE rows, which is also what an untrained residual hypernetwork gives. Rows are kept
in an LRU cache keyed by surface bytes, so a token seen in an earlier batch costs nothing.

Not handled: architectures whose input embedding is not an `nn.Embedding` (or Gemma's
scaled one) in front of the decoder, and output layers other than one linear map (a final
logit soft-cap, as in Gemma 2/3, is applied).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from tokensurgery.checkpoint import Embeddings
from tokensurgery.errors import TokenSurgeryError

from ..model import Hypernet
from .merger import NewToken


@dataclass
class CacheStats:
    size: int
    capacity: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)


class DynamicModel:
    """A causal LM whose vocabulary is BASE's plus each batch's new tokens.

    `hypernet`: a folder with a hypernetwork trained for this model, or None for FVT rows."""

    def __init__(self, model, hypernet: str | None = None, cache_size: int = 8192, device: str = "cpu"):
        self.model = model
        self.embed = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if not isinstance(self.embed, torch.nn.Embedding) or head is None or not hasattr(head, "weight"):
            raise TokenSurgeryError(f"{type(model).__name__}: dynamic merging needs an embedding table and a linear "
                                    "output layer")
        self.head = head
        self.n_base = self.embed.weight.shape[0]
        self.scale = getattr(self.embed, "embed_scale", None)  # Gemma scales embeddings by sqrt(hidden)
        self.softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        self.tied = head.weight is self.embed.weight or head.weight.data_ptr() == self.embed.weight.data_ptr()
        self.hypernet = None
        if hypernet is not None:
            base = Embeddings(self.embed.weight.detach().float().cpu(), None if self.tied else head.weight.detach().float().cpu(),
                              "input", None if self.tied else "output", self.n_base)
            self.hypernet = Hypernet.from_pretrained(hypernet, base).to(device).eval()
        self.capacity = cache_size
        self._cache: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0
        self.seconds = 0.0  # time spent predicting rows

    @property
    def cache(self) -> CacheStats:
        return CacheStats(len(self._cache), self.capacity, self.hits, self.misses)

    # ---- rows of new tokens -------------------------------------------------------------------

    @torch.no_grad()
    def rows(self, tokens: list[NewToken]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input rows, output rows) [len(tokens), hidden] in the model's dtype, unscaled (as
        stored in the embedding matrices)."""
        start = time.perf_counter()
        w_in, w_out = self.embed.weight, self.head.weight
        missing = [t for t in dict.fromkeys(tokens) if t.surface not in self._cache]
        self.misses += len(missing)
        self.hits += len(tokens) - len(missing)
        if missing:
            if any(p >= self.n_base for t in missing for p in t.parts):
                raise TokenSurgeryError("a new token joins ids outside BASE's embedding matrix")
            if self.hypernet is not None:
                pieces = [list(t.parts[: self.hypernet.config.max_pieces]) for t in missing]
                new_in, new_out = self.hypernet(pieces)
                new_in, new_out = new_in.to(w_in), new_out.to(w_out)
            else:
                lengths = torch.tensor([len(t.parts) for t in missing])
                flat = torch.tensor([p for t in missing for p in t.parts], device=w_in.device)
                seg = torch.repeat_interleave(torch.arange(len(missing)), lengths).to(w_in.device)
                new_in = torch.zeros(len(missing), w_in.shape[1], dtype=torch.float32, device=w_in.device)
                new_in.index_add_(0, seg, w_in[flat].float())
                new_in = (new_in / lengths.to(new_in).unsqueeze(1)).to(w_in.dtype)
                if self.tied:
                    new_out = new_in
                else:
                    new_out = torch.zeros(len(missing), w_out.shape[1], dtype=torch.float32, device=w_out.device)
                    new_out.index_add_(0, seg, w_out[flat].float())
                    new_out = (new_out / lengths.to(new_out).unsqueeze(1)).to(w_out.dtype)
            for t, a, b in zip(missing, new_in, new_out):
                self._cache[t.surface] = (a, b)
        for t in tokens:
            self._cache.move_to_end(t.surface)
        rows = [self._cache[t.surface] for t in tokens]
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        self.seconds += time.perf_counter() - start
        if not rows:
            return w_in.new_zeros(0, w_in.shape[1]), w_out.new_zeros(0, w_out.shape[1])
        return torch.stack([a for a, _ in rows]), torch.stack([b for _, b in rows])

    # ---- the model ---------------------------------------------------------------------------

    def inputs_embeds(self, ids: torch.Tensor, new_in: torch.Tensor) -> torch.Tensor:
        """Input vectors for ids over BASE + new tokens, exactly as the model's own embedding
        layer gives them for BASE ids."""
        is_new = ids >= self.n_base
        x = self.embed(ids.masked_fill(is_new, 0))
        if is_new.any():
            rows = new_in[ids[is_new] - self.n_base]
            x[is_new] = rows * self.scale.to(rows.dtype) if self.scale is not None else rows
        return x

    def hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor, new_in: torch.Tensor) -> torch.Tensor:
        """Last hidden states [batch, length, hidden] (right padding)."""
        out = self.model.base_model(inputs_embeds=self.inputs_embeds(ids, new_in), attention_mask=attention_mask)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor, new_out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over BASE's vocabulary, then the new tokens' (when `new_out` is given)."""
        logits = self.head(hidden)
        if new_out is not None and len(new_out):
            logits = torch.cat([logits, hidden @ new_out.to(hidden.dtype).T], dim=-1)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
