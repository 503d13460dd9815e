"""TreeLM: a transformers causal LM evaluated on a tree of token sequences over a KV cache of slots.

The KV cache is a pool of *slots*, one per token fed so far, each with its parent slot and its
position (depth). One `forward` call evaluates many branches at once: their tokens are packed
into a single query whose attention mask lets each token see exactly its ancestors (cached
slots and earlier query tokens) and itself (tree attention), with position ids by depth. After
the call the query's tokens become slots too; `keep` says how many of them stay (the rest are
cropped off the end), so a caller may keep every branch it will extend later (no token is ever
fed twice) or only a committed chain. `compact` drops slots no longer needed: keys carry their
rotary position already, so slots can be moved freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tokensurgery.kernels.narrow_linear import narrow_linear, narrow_modules

from .llama_call import LlamaCall


@dataclass
class Query:
    """One packed call: `tokens[i]` whose parent is `parents[i]` (an earlier index of the
    query, or -1: then its parent is cache slot `anchor[i]`, -1 for none). The first `keep`
    tokens stay in the cache as new slots (in query order); the others are dropped after the
    call (-1: keep them all)."""

    tokens: list[int]
    parents: list[int]
    anchor: list[int]
    keep: int = 0


class TreeLM:
    """Tree-attention evaluation of a causal LM over a KV cache of slots (see the module
    docstring). `slot_token[s]`, `slot_parent[s]`, `slot_pos[s]` describe slot s; `calls` and
    `tokens_fed` count forward calls and the tokens they fed. `narrow` and `lean` (both on by
    default) choose how calls run on CPU: see the properties."""

    def __init__(self, model, max_query: int | None = None, narrow: bool = True, lean: bool = True):
        self.model = model
        # float32 CPU layers run as W @ X^T during calls (kernels/narrow_linear.py: a call of
        # a few tokens is bound by reading the weights, which `linear` does slowly there), and
        # Llama-architecture models skip transformers' module tree (llama_call.py)
        self._want_lean = lean
        self.narrow = narrow
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_rows = model.get_output_embeddings().weight.shape[0]
        self.layer_types = set(getattr(config, "layer_types", None) or [])
        self.window = getattr(config, "sliding_window", None)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # keep one call's float32 logits near 256 MiB
        self.max_query = max_query or max(16, min(512, (1 << 26) // self.vocab_rows))
        import inspect

        # transformers 5.x renames `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_rows = "logits_to_keep" in params  # logits for the rows asked for only
        self.calls = 0
        self.tokens_fed = 0
        self.reset([])

    @property
    def narrow(self) -> bool:
        """Whether calls run the model's float32 CPU `nn.Linear` layers as W @ X^T (default on;
        off: the layers as they are, e.g. to compare)."""
        return bool(self._narrow)

    @narrow.setter
    def narrow(self, on: bool) -> None:
        self._narrow = narrow_modules(self.model) if on else []
        self._narrow_head = any(m is self.model.get_output_embeddings() for m in self._narrow)
        lean = on and self._want_lean and LlamaCall.unsupported(self.model) is None
        self._lean = LlamaCall(self.model) if lean else None

    @property
    def lean(self) -> bool:
        """Whether calls run through `LlamaCall` (a float32 CPU Llama with `narrow` on: the
        default) rather than the model's own forward."""
        return self._lean is not None

    @lean.setter
    def lean(self, on: bool) -> None:
        self._want_lean = on
        self.narrow = self.narrow

    def layers(self):
        """A `with` block in which the model runs its layers as this TreeLM's calls do (W @ X^T
        where `narrow`), for other calls on the same model (ByteLM hands decoding to `generate`)."""
        return narrow_linear(self.model, self._narrow)

    def __len__(self) -> int:
        return len(self.slot_token)

    def reset(self, trunk: list[int], defer: bool = False) -> torch.Tensor | None:
        """Start over with `trunk` as slots 0..len-1 (a chain); returns the log-probabilities
        after its last token (None for an empty trunk). With `defer` nothing is run now: the
        trunk goes in front of the next `forward` call's query when both fit in one call (a
        cold prompt then costs one call, not two), and `trunk_logprobs` holds the
        log-probabilities after its last token once it has been fed."""
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.slot_token: list[int] = []
        self.slot_parent: list[int] = []
        self.slot_pos: list[int] = []
        self._anc = torch.zeros(0, 0, dtype=torch.bool)  # _anc[s, t]: slot t is s itself or an ancestor of s
        self._trunk: list[int] = list(trunk) if defer else []
        self.trunk_logprobs: torch.Tensor | None = None
        return None if defer else self._feed_trunk(list(trunk))

    def _feed_trunk(self, trunk: list[int]) -> torch.Tensor | None:
        out = None
        for start in range(0, len(trunk), self.max_query):
            part = trunk[start : start + self.max_query]
            q = Query(part, [-1] + list(range(len(part) - 1)), [len(self) - 1] * len(part), keep=-1)
            out = self._run(q, rows=[len(part) - 1])[0]
        return out

    def feed_chains(self, chains: Sequence[list[int]]) -> tuple[list[int], list[torch.Tensor]]:
        """Feed each (non-empty) chain of tokens as its own sequence from position 0, packed
        into as few calls as `max_query` allows; returns each chain's last slot and the
        log-probabilities after it."""
        last, out = [-1] * len(chains), [None] * len(chains)
        todo = [(c, 0) for c in range(len(chains))]  # (chain, tokens of it already fed)
        while todo:
            q, owners, rest = Query([], [], [], keep=-1), [], []
            for c, done in todo:
                room = self.max_query - len(q.tokens)
                if room <= 0:
                    rest.append((c, done))
                    continue
                part = chains[c][done : done + room]
                for i, tok in enumerate(part):
                    q.tokens.append(tok)
                    q.parents.append(len(q.tokens) - 2 if i else -1)
                    q.anchor.append(-1 if i else last[c])
                owners.append((c, len(q.tokens) - 1))
                if done + len(part) < len(chains[c]):
                    rest.append((c, done + len(part)))
            base = len(self)
            logprobs = self.forward(q)
            for c, i in owners:
                last[c], out[c] = base + i, logprobs[i]
            todo = rest
        return last, out

    def path(self, slot: int) -> list[int]:
        """The slots from the first token of `slot`'s sequence down to `slot` itself."""
        out = []
        while slot >= 0:
            out.append(slot)
            slot = self.slot_parent[slot]
        return out[::-1]

    def _masks(self, q: Query):
        S, m = len(self), len(q.tokens)
        allowed = torch.zeros(m, S + m, dtype=torch.bool)
        pos = torch.zeros(m, dtype=torch.long)
        for i, p in enumerate(q.parents):
            if p < 0:
                a = q.anchor[i]
                if a >= 0:
                    allowed[i, :S] = self._anc[a, :S]
                    pos[i] = self.slot_pos[a] + 1
            else:
                allowed[i] = allowed[p]
                pos[i] = pos[p] + 1
            allowed[i, S + i] = True
        kpos = torch.cat([torch.tensor(self.slot_pos, dtype=torch.long), pos])
        neg = torch.finfo(self.dtype).min

        def additive(ok):
            return torch.zeros(ok.shape, dtype=self.dtype).masked_fill(~ok, neg)[None, None].to(self.device)

        full = additive(allowed)
        if "sliding_attention" in self.layer_types and self.window:
            near = (pos[:, None] - kpos[None, :]) < self.window
            mask = {"full_attention": full, "sliding_attention": additive(allowed & near)}
        else:
            mask = full
        return mask, pos, allowed[:, S:]

    def forward(self, q: Query) -> torch.Tensor:
        """Float64 log-probabilities (len(q.tokens) x vocab) after each query token. A trunk
        deferred by `reset` is fed first, in the same call when both fit."""
        if len(q.tokens) > self.max_query:
            raise ValueError(f"query of {len(q.tokens)} tokens exceeds max_query={self.max_query}")
        trunk, self._trunk = self._trunk, []
        if not trunk:
            return self._run(q)
        if len(trunk) + len(q.tokens) > self.max_query:
            self.trunk_logprobs = self._feed_trunk(trunk)
            return self._run(q) if q.tokens else torch.zeros(0, self.vocab_rows, dtype=torch.float64)
        # The cache is empty, so every anchored query token hangs from a trunk slot, which is
        # the same index in the merged query.
        T = len(trunk)
        parents = [-1] + list(range(T - 1))
        parents += [p + T if p >= 0 else q.anchor[i] for i, p in enumerate(q.parents)]
        merged = Query(trunk + q.tokens, parents, [-1] * len(parents), keep=-1 if q.keep < 0 else T + q.keep)
        out = self._run(merged, rows=list(range(T - 1, T + len(q.tokens))))
        self.trunk_logprobs = out[0]
        return out[1:]

    @torch.no_grad()
    def _run(self, q: Query, rows: list[int] | None = None) -> torch.Tensor:
        """One model call; log-probabilities after the query tokens `rows` (all when None)."""
        mask, pos, own = self._masks(q)
        ids = torch.tensor([q.tokens], device=self.device)
        if self._lean is not None:
            logits = self._lean(ids[0], mask, pos, self.cache, list(range(len(q.tokens))) if rows is None else list(rows))
            return self._after_call(q, pos, own, logits)
        extra = {self._cache_arg: self.cache}
        wanted = len(q.tokens) if rows is None else len(rows)
        if self._logits_rows:
            keep_rows = list(range(len(q.tokens))) if rows is None else list(rows)
            if not self._narrow_head:
                keep_rows += keep_rows[-1:] * (_padded_rows(wanted, self.device) - wanted)
            if rows is not None or len(keep_rows) > wanted:
                extra["logits_to_keep"] = torch.tensor(keep_rows, device=self.device)
        with self.layers():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos[None].to(self.device), use_cache=True, **extra)
        logits = out.logits[0][:wanted] if self._logits_rows else out.logits[0]
        if rows is not None and not self._logits_rows:
            logits = logits[rows]
        return self._after_call(q, pos, own, logits)

    def _after_call(self, q: Query, pos: torch.Tensor, own: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Count the call, keep the query's first `q.keep` tokens as slots, and turn the
        logits into float64 log-probabilities."""
        self.calls += 1
        self.tokens_fed += len(q.tokens)
        keep = len(q.tokens) if q.keep < 0 else q.keep
        if keep < len(q.tokens):
            self.cache.crop(-(len(q.tokens) - keep))
        self._add_slots(q, pos, own, keep)
        return torch.cat([logits[i : i + 64].double().log_softmax(-1) for i in range(0, len(logits), 64)]).cpu()

    def _add_slots(self, q: Query, pos: torch.Tensor, own: torch.Tensor, keep: int) -> None:
        """Record the first `keep` query tokens as slots (their parents must be among them or cached)."""
        if not keep:
            return
        S = len(self)
        for i in range(keep):
            p = q.parents[i]
            if p >= keep:
                raise ValueError("a kept query token's parent must be kept too")
            self.slot_parent.append(S + p if p >= 0 else q.anchor[i])
            self.slot_token.append(q.tokens[i])
            self.slot_pos.append(int(pos[i]))
        anc = torch.zeros(S + keep, S + keep, dtype=torch.bool)
        anc[:S, :S] = self._anc
        for i in range(keep):
            p = q.parents[i]
            if p < 0 and q.anchor[i] >= 0:
                anc[S + i, :S] = self._anc[q.anchor[i]]
            elif p >= 0:
                anc[S + i, :S] = anc[S + p, :S]
        anc[S:, S:] = own[:keep, :keep]
        self._anc = anc

    def compact(self, keep: list[int]) -> list[int]:
        """Keep only the slots `keep` (each with its ancestors among them); returns the new
        index of every old slot (-1 where dropped)."""
        keep = sorted(set(keep))
        new = [-1] * len(self)
        for n, s in enumerate(keep):
            new[s] = n
        for s in keep:
            if self.slot_parent[s] >= 0 and new[self.slot_parent[s]] < 0:
                raise ValueError(f"slot {s} is kept but its parent {self.slot_parent[s]} is not")
        idx = torch.tensor(keep, dtype=torch.long)
        for layer in self.cache.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, idx.to(layer.keys.device))
                layer.values = layer.values.index_select(-2, idx.to(layer.values.device))
        self.slot_token = [self.slot_token[s] for s in keep]
        self.slot_parent = [new[self.slot_parent[s]] if self.slot_parent[s] >= 0 else -1 for s in keep]
        self.slot_pos = [self.slot_pos[s] for s in keep]
        self._anc = self._anc[idx][:, idx]
        return new


def _padded_rows(rows: int, device: torch.device) -> int:
    """How many output-head rows to compute for `rows` wanted ones. On CPU, MKL's float32
    matrix product runs 7 to 15 rows far slower than 16 (measured on the 2-core machine for
    Gemma-3's 262,144 x 640 head: 9 rows 107 ms, 15 rows 176 ms, 16 rows 63 ms; 1-6 rows and
    16 or more are not slowed), so such calls repeat the last row up to 16 and drop the copies.
    Elsewhere the rows stay as they are."""
    if device.type == "cpu" and 7 <= rows < 16:
        return 16
    return rows
