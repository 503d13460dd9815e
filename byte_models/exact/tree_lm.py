"""TreeLM: a transformers causal LM evaluated on a tree of token sequences over a cached trunk.

The committed trunk (context tokens every live branch shares) stays in the KV cache. One
`forward` call evaluates many branches at once: their tokens are packed into a single
query whose attention mask lets each token see the trunk up to its fork point, its own
ancestors and itself (tree attention), with position ids by depth. The first tokens of a
call may extend the trunk; the rest are dropped from the cache afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Query:
    """One packed call: `tokens[i]` whose parent is `parents[i]` (an earlier index, or -1
    for the trunk) and which sees the first `fork[i]` trunk positions when its parent is -1.
    The first `commit` entries must be a chain off the trunk's end; they join the trunk."""

    tokens: list[int]
    parents: list[int]
    fork: list[int]
    commit: int = 0


class TreeLM:
    """Tree-attention evaluation of a causal LM with a persistent trunk KV cache."""

    def __init__(self, model, max_query: int | None = None):
        self.model = model
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
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.calls = 0
        self.reset([])

    def reset(self, trunk: list[int]) -> torch.Tensor | None:
        """Start over with `trunk` as the committed context; returns the log-probabilities
        after its last token (None for an empty trunk)."""
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.trunk: list[int] = []
        if not trunk:
            return None
        out = None
        for start in range(0, len(trunk), self.max_query):
            part = trunk[start : start + self.max_query]
            n = len(self.trunk)
            q = Query(part, [-1] + list(range(len(part) - 1)), [n] * len(part), commit=len(part))
            out = self.forward(q)[-1]
        return out

    def _masks(self, q: Query):
        T, m = len(self.trunk), len(q.tokens)
        allowed = torch.zeros(m, T + m, dtype=torch.bool)
        pos = torch.zeros(m, dtype=torch.long)
        for i, p in enumerate(q.parents):
            if p < 0:
                allowed[i, : q.fork[i]] = True
                pos[i] = q.fork[i]
            else:
                allowed[i] = allowed[p]
                pos[i] = pos[p] + 1
            allowed[i, T + i] = True
        kpos = torch.cat([torch.arange(T), pos])
        neg = torch.finfo(self.dtype).min

        def additive(ok):
            return torch.zeros(ok.shape, dtype=self.dtype).masked_fill(~ok, neg)[None, None].to(self.device)

        full = additive(allowed)
        if "sliding_attention" in self.layer_types and self.window:
            near = (pos[:, None] - kpos[None, :]) < self.window
            mask = {"full_attention": full, "sliding_attention": additive(allowed & near)}
        else:
            mask = full
        return mask, pos[None].to(self.device)

    @torch.no_grad()
    def forward(self, q: Query) -> torch.Tensor:
        """Float64 log-probabilities (len(q.tokens) x vocab) after each query token."""
        if len(q.tokens) > self.max_query:
            raise ValueError(f"query of {len(q.tokens)} tokens exceeds max_query={self.max_query}")
        mask, pos = self._masks(q)
        ids = torch.tensor([q.tokens], device=self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{self._cache_arg: self.cache})
        self.calls += 1
        drop = len(q.tokens) - q.commit
        if drop:
            self.cache.crop(-drop)
        self.trunk += q.tokens[: q.commit]
        logits = out.logits[0]
        return torch.cat([logits[i : i + 64].double().log_softmax(-1) for i in range(0, len(logits), 64)]).cpu()
