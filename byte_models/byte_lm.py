"""ByteLM: a tokenized causal LM read as an exact next-byte model.

For a byte prefix x, the probability that the text starts with x is the mass of the valid
token sequences that cover x (see `cover_tree.py`; validity in `canonical.py`). Next-byte
distributions are ratios of such masses, so they come straight out of the token model with
no training. Special tokens in a prompt are honoured the way the tokenizer reads them;
the byte model itself only ever produces text bytes and end-of-sequence.

Three ways to use it, by how much of the text is known:
- `score(text)` / `distributions(text)`: every branch is known in advance, so all of them
  are evaluated in a few large tree-attention calls.
- `generate(prompt)` / `heal(prompt)`: the prompt's ragged end is resolved exactly (one
  cover is drawn from the exact distribution), then ordinary token sampling goes on.
- `stream(prompt)` / `next_byte_logprobs(prefix)`: the distribution after every byte,
  with likely branches evaluated ahead of time (`stream.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.surface_index import SurfaceIndex
from tokensurgery.vocabulary import TokenKind, Vocabulary

from .canonical import canonical_for
from .cover_tree import EOS, Accumulator, Node, ZeroProbability, node_groups, set_distribution
from .stream import ByteStream
from .token_model import Query, TreeLM

_FIM_NAMES = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
              ("[PREFIX]", "[SUFFIX]", "[MIDDLE]"))


@dataclass
class Sampling:
    """How token distributions are reshaped before bytes are read from them: the byte model
    is then exactly that of the reshaped token model (temperature 0 = most likely token)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def apply(self, logprobs: torch.Tensor) -> torch.Tensor:
        if self.temperature == 1.0 and not self.top_k and self.top_p >= 1.0:
            return logprobs
        x = logprobs.clone()
        if self.temperature <= 0:
            top = x.argmax(-1, keepdim=True)
            out = torch.full_like(x, -math.inf)
            return out.scatter_(-1, top, 0.0)
        x = (x / self.temperature).log_softmax(-1)
        if self.top_k and self.top_k < x.shape[-1]:
            kth = x.topk(self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, -math.inf)
        if self.top_p < 1.0:
            sorted_x, order = x.sort(-1, descending=True)
            cum = sorted_x.exp().cumsum(-1)
            drop = cum - sorted_x.exp() >= self.top_p  # keep the smallest set reaching top_p
            x = x.masked_fill(drop.scatter(-1, order, drop), -math.inf)
        return x.log_softmax(-1)


@dataclass
class ByteScore:
    """Byte-level log-likelihood of a text: `logprobs[i]` = log P(byte i | bytes before)."""

    logprobs: np.ndarray
    eos_logprob: float | None = None
    renormalisation: float = 0.0  # see ByteLM.score

    @property
    def total(self) -> float:
        return float(self.logprobs.sum() + (self.eos_logprob or 0.0))

    @property
    def bits_per_byte(self) -> float:
        return -float(self.logprobs.sum()) / math.log(2) / max(len(self.logprobs), 1)


class ByteLM:
    """Exact next-byte view of a causal LM and its tokenizer (see the module docstring).

    `model` is a transformers causal LM; `vocab` the `Vocabulary` of its tokenizer.
    `start` is the token that begins a document when the prompt has no special tokens
    ("auto": the BOS the tokenizer adds, else `<|endoftext|>`, else the BOS role).
    `settle_bytes`: prompt text further than this before the end is taken in its canonical
    tokenization (exact whenever no valid encoding of the prompt's end reaches back that far).
    """

    def __init__(self, model, vocab: Vocabulary, start: int | str | None = "auto", eos: int | None = None,
                 settle_bytes: int = 96, speculate: int = 8, name: str = ""):
        self.vocab = vocab
        self.name = name or vocab.name
        self.canonical = canonical_for(vocab)
        self.index = SurfaceIndex(vocab.surface, np.flatnonzero(self.canonical.continuable).tolist())
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < len(vocab):
            raise TokenSurgeryError(f"the model has {rows} output rows but the tokenizer has {len(vocab)} tokens")
        self.lm = TreeLM(model)
        self.start = self._start_token(start)
        self.eos = eos if eos is not None else self._document_end()
        self.settle_bytes = settle_bytes
        self.speculate = speculate
        # tokens the tokenizer matches in text before anything else (specials, added tokens)
        self._specials = {}
        for i, k in enumerate(vocab.kinds):
            if k in (TokenKind.SPECIAL, TokenKind.ADDED, TokenKind.UNUSED) and vocab.surface[i]:
                self._specials.setdefault(vocab.surface[i], i)
        longest_first = sorted(self._specials, key=len, reverse=True)
        self._special_re = re.compile(b"|".join(map(re.escape, longest_first))) if longest_first else None

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, spec: str | Path, dtype: str = "float32", device: str = "cpu", **kwargs) -> "ByteLM":
        """Load a bundled alias (`smollm2-135m`, `gemma3-270m`), local folder, `.gguf` or hub id."""
        from tokensurgery.assets import resolve_model
        from tokensurgery.evaluate import load_causal_lm

        folder = resolve_model(spec, progress=False)
        model, _ = load_causal_lm(folder, dtype=dtype, device=device)
        kwargs.setdefault("name", str(spec))
        return cls(model, Vocabulary.load(folder), **kwargs)

    def _special_id(self, content: str) -> int | None:
        for i, t in enumerate(self.vocab.tokens):
            if t == content and self.vocab.kinds[i] == TokenKind.SPECIAL:
                return i
        return None

    def _start_token(self, start) -> int:
        if isinstance(start, int):
            return start
        if isinstance(start, str) and start != "auto":
            found = self._special_id(start)
            if found is None:
                raise TokenSurgeryError(f"start token {start!r} is not a special token of {self.name}")
            return found
        for candidate in (self.vocab.bos_added, self._special_id("<|endoftext|>"), self.vocab.roles.get("bos")):
            if candidate is not None:
                return candidate
        raise TokenSurgeryError(f"{self.name}: no BOS or <|endoftext|> token to start a document; pass start=<token id>")

    def _document_end(self) -> int:
        for candidate in (self._special_id("<|endoftext|>"), self.vocab.roles.get("eos")):
            if candidate is not None:
                return candidate
        raise TokenSurgeryError(f"{self.name}: no end-of-text token; pass eos=<token id>")

    # ---- prompts --------------------------------------------------------------------

    @staticmethod
    def _bytes(text: str | bytes) -> bytes:
        if isinstance(text, str):
            return text.encode("utf-8")
        if isinstance(text, (bytes, bytearray)):
            return bytes(text)
        raise TokenSurgeryError(f"expected str or bytes, got {type(text).__name__}")

    def _split(self, data: bytes) -> tuple[list[int], bytes]:
        """Context token ids (start token, everything up to the last special token in the
        prompt, and a settled canonical prefix) and the free byte region after them."""
        ids, pos = [self.start], 0
        if self._special_re is not None:
            for m in self._special_re.finditer(data):  # longest match first, left to right
                ids += self.vocab.decompose(data[pos : m.start()]) + [self._specials[m.group()]]
                pos = m.end()
        region = data[pos:]
        if len(region) > self.settle_bytes:
            tokens = self.vocab.decompose(region)
            done, keep = 0, 0
            for n, t in enumerate(tokens):
                if len(region) - (done + len(self.vocab.surface[t])) < self.settle_bytes:
                    break
                done += len(self.vocab.surface[t])
                keep = n + 1
            ids += tokens[:keep]
            region = region[done:]
        return ids, region

    # ---- evaluating nodes -------------------------------------------------------------

    def _root(self, context: list[int]) -> Node:
        logprobs = self.lm.reset(context)
        root = Node(None, None, 0, 0.0, (), committed=True, trunk_pos=len(context))
        self._set(root, logprobs)
        return root

    def _set(self, node: Node, logprobs: torch.Tensor) -> None:
        """Store the node's next-token distribution (invalid continuations at 0) and give its
        existing children their log-probabilities."""
        probs = logprobs[torch.from_numpy(self.index.ids)].exp().numpy().copy()
        invalid = self.canonical.invalid_after(node.tail)
        if len(invalid):
            probs[self.index.position[invalid]] = 0.0
        set_distribution(node, probs, math.exp(float(logprobs[self.eos])))
        for child in node.children.values():
            self._child_logp(node, child)

    def _child_logp(self, node: Node, child: Node) -> None:
        p = node.probs[self.index.position[child.token]]
        child.logp = node.logp + math.log(p) if p > 0 else -math.inf

    def _evaluate(self, targets: Sequence[Node], commit: Node | None = None, full=None) -> None:
        """Give every target its next-token distribution in as few calls as fit; `commit`
        (a descendant of the trunk's last node) and its ancestors join the trunk. Nodes for
        which `full(node)` is false only pass log-probabilities on to their children."""
        chain: list[Node] = []
        n = commit
        while n is not None and not n.committed:
            chain.append(n)
            n = n.parent
        chain.reverse()
        pending = sorted({id(t): t for t in targets if t.probs is None}.values(), key=lambda t: t.depth)
        while chain or pending:
            tokens, parents, fork, nodes, at = [], [], [], [], {}
            for node in chain:
                self._pack(node, tokens, parents, fork, nodes, at)
            rest = []
            for t in pending:
                path, n = [], t
                while not n.committed and id(n) not in at:
                    path.append(n)
                    n = n.parent
                if len(tokens) + len(path) > self.lm.max_query and len(tokens) > len(chain):
                    rest.append(t)
                    continue
                for node in reversed(path):
                    self._pack(node, tokens, parents, fork, nodes, at)
            out = self.lm.forward(Query(tokens, parents, fork, commit=len(chain)))
            base = len(self.lm.trunk) - len(chain)
            for i, node in enumerate(chain):
                node.committed, node.trunk_pos = True, base + i + 1
            for i, node in enumerate(nodes):  # parents come before children
                if node.probs is None:
                    if full is None or full(node):
                        self._set(node, out[i])
                    else:
                        for child in node.children.values():
                            child.logp = node.logp + float(out[i][child.token])
            chain, pending = [], rest

    @staticmethod
    def _pack(node: Node, tokens, parents, fork, nodes, at) -> None:
        at[id(node)] = len(tokens)
        tokens.append(node.token)
        nodes.append(node)
        if id(node.parent) in at:
            parents.append(at[id(node.parent)])
            fork.append(0)
        else:
            parents.append(-1)
            fork.append(node.parent.trunk_pos)

    # ---- the tree over known bytes ----------------------------------------------------------

    def _grow(self, node: Node, data: bytes, only: int | None = None) -> list[Node]:
        """Children of `node` whose tokens spell data[node.end:node.end+k] exactly (only k =
        `only` when given) and may follow it."""
        out = []
        ks = [only] if only is not None else range(1, min(self.index.max_len, len(data) - node.end) + 1)
        for k in ks:
            piece = data[node.end : node.end + k]
            lo, hi = self.index.range(piece)
            if hi <= lo:
                break
            for r in self.index.exact(lo, hi, k):
                tok = int(self.index.ids[r])
                child = node.children.get(tok)
                if child is None:
                    if node.probs is not None and node.probs[r] == 0 or not self.canonical.valid_next(node.tail, tok):
                        continue
                    child = Node(node, tok, node.end + k, math.nan, self.canonical.tail(node.tail, tok), node.depth + 1)
                    node.children[tok] = child
                    if node.probs is not None:
                        self._child_logp(node, child)
                out.append(child)
        return out

    def _tree(self, root: Node, data: bytes) -> list[Node]:
        """Every valid node along `data`, ordered by end (parents before children)."""
        by_end: list[list[Node]] = [[] for _ in range(len(data) + 1)]
        by_end[0].append(root)
        ordered = []
        for j in range(len(data) + 1):
            for node in by_end[j]:
                ordered.append(node)
                for child in self._grow(node, data):
                    by_end[child.end].append(child)
        return ordered

    def _evaluate_tree(self, nodes: list[Node], commit_to: Node | None, on_node=None) -> None:
        """Evaluate all nodes (ordered by end) in chunks; the branch to `commit_to` joins the
        trunk as it goes so side branches fork from the KV cache. `on_node(node)` runs once a
        node's distribution and log-probability are both known."""
        main: dict[int, Node] = {}
        n = commit_to
        while n is not None:
            main[id(n)] = n
            n = n.parent
        todo = [n for n in nodes if n.probs is None]
        if on_node:
            for node in nodes:
                if node.probs is not None:
                    on_node(node)
        step = max(1, self.lm.max_query // 2)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            commit = None
            for node in chunk:
                if id(node) in main:
                    commit = node
            self._evaluate(chunk, commit=commit)
            if on_node:
                for node in chunk:
                    on_node(node)

    # ---- public API: known text -------------------------------------------------------

    def _accumulate(self, data: bytes, context: bytes) -> tuple[Accumulator, int]:
        """Scaled next-byte masses at every position of region+data (see `distributions`)."""
        ids, region = self._split(context)
        full = region + data
        root = self._root(ids)
        nodes = self._tree(root, full)
        acc = Accumulator(len(full) + 1)
        first = len(region)

        def on_node(node: Node) -> None:
            for k in range(0, min(self.index.max_len, len(full) - node.end) + 1):
                groups = node_groups(self.index, node, full[node.end : node.end + k])
                if groups is None:
                    break
                if node.end + k >= first:
                    acc.add(node.end + k, node.logp, groups)
            node.probs = node.cum = None  # fully used: keep memory bounded on long texts

        last = max(nodes, key=lambda n: (n.end, -n.depth))
        self._evaluate_tree(nodes, last, on_node)
        return acc, first

    def distributions(self, text: str | bytes, context: str | bytes = b"") -> np.ndarray:
        """Log next-byte distributions at every position of `text` (len+1 rows; columns are
        bytes 0..255 and EOS at 256) after the prompt `context`, from few batched calls."""
        return self._distributions(self._bytes(text), self._bytes(context))[0]

    def _distributions(self, data: bytes, context: bytes) -> tuple[np.ndarray, Accumulator]:
        acc, first = self._accumulate(data, context)
        out = acc.log_distributions()[first:]
        if data:
            picked = out[np.arange(len(data)), np.frombuffer(data, dtype=np.uint8)]
            if not np.isfinite(picked).all():
                bad = int(np.flatnonzero(~np.isfinite(picked))[0])
                raise ZeroProbability(f"byte {data[bad]:#04x} at offset {bad} cannot follow the bytes before it under "
                                      f"{self.name} (no valid token sequence spells it)")
        return out, acc

    def score(self, text: str | bytes, context: str | bytes = b"", eos: bool = False) -> ByteScore:
        """Byte-level log-likelihood (natural log) of `text` after `context`, per byte and
        total; with `eos`, the end of the text is scored too. `renormalisation` is the total
        minus the log-probability of the token sequences that spell the text exactly (with
        EOS) or cover it (without): the log of the mass the canonical rule pruned on the way."""
        data = self._bytes(text)
        dist, acc = self._distributions(data, self._bytes(context))
        picked = dist[np.arange(len(data)), np.frombuffer(data, dtype=np.uint8)] if data else np.zeros(0)
        result = ByteScore(picked, float(dist[-1, EOS]) if eos else None)
        n = len(acc.scale) - 1
        with np.errstate(divide="ignore"):
            if eos:
                direct = math.log(acc.mass[n, EOS]) + acc.scale[n]
            elif data:
                direct = math.log(acc.mass[n - 1, data[-1]]) + acc.scale[n - 1]
            else:
                direct = 0.0
        result.renormalisation = result.total - direct
        return result

    def next_byte_logprobs(self, prefix: str | bytes, context: str | bytes = b"") -> np.ndarray:
        """Log-probabilities of the next byte (0..255) and of EOS (index 256) after `prefix`."""
        return self.stream(self._bytes(context) + self._bytes(prefix)).logprobs()

    # ---- public API: unknown continuation -----------------------------------------------------

    def stream(self, prompt: str | bytes = b"", speculate: int | None = None) -> "ByteStream":
        """A live cover tree after `prompt`: read `.logprobs()`, `.advance(byte)`, repeat."""
        return ByteStream(self, self._bytes(prompt), self.speculate if speculate is None else speculate)

    def generate(self, prompt: str | bytes | Sequence[str | bytes] = b"", max_new_bytes: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: Iterable[str | bytes] = (), seed: int | None = None,
                 as_bytes: bool = False):
        """Continue `prompt` (or each prompt of a list, batched), which may end mid-token or
        mid-character. The prompt's end is resolved by drawing one covering token from the
        exact byte-level distribution; then ordinary token sampling goes on (transformers'
        `generate`, batched over prompts) with every step restricted to tokens the canonical
        rule allows. Sampling options act on each token (temperature 0: greedy). Returns the
        new text (a list for a list of prompts)."""
        batch = isinstance(prompt, (list, tuple))
        prompts = [self._bytes(p) for p in (prompt if batch else [prompt])]
        sampling = Sampling(temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        rows, outs, tails, cache = [], [], [], None
        for p in prompts:
            stream = ByteStream(self, p, speculate=0)
            node, token, out = stream.resolve(rng, sampling)
            if not batch and token is not None:  # hand the KV cache of context + node over to `generate`
                self._evaluate([], commit=node)
                cache = self.lm.cache
            rows.append(None if token is None else stream.context + node.path() + [token])
            tails.append(None if token is None else self.canonical.tail(node.tail, token))
            outs.append(out)
        live = [r for r, row in enumerate(rows) if row is not None]
        budget = max_new_bytes - min((len(outs[r]) for r in live), default=0)
        if live and budget > 0:
            new = self._continue([rows[r] for r in live], [tails[r] for r in live], budget, sampling, seed, stop, cache)
            for r, data in zip(live, new):
                outs[r] += data
        stops = [self._bytes(s) for s in stop]
        for r, out in enumerate(outs):
            for s in stops:
                if s in out:
                    out = out[: out.index(s)]
            outs[r] = out[:max_new_bytes] if as_bytes else out[:max_new_bytes].decode("utf-8", "replace")
        return outs if batch else outs[0]

    def _continue(self, rows: list[list[int]], tails: list, max_new_bytes: int, sampling: Sampling, seed, stop,
                  cache=None) -> list[bytes]:
        """Token sampling with transformers' `generate` from token rows (left-padded), masked
        to valid continuations; returns each row's new bytes. `cache` (one row) holds the KV
        of all but the row's last token."""
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        blm, width = self, max(map(len, rows))
        allowed = torch.zeros(self.lm.vocab_rows, dtype=torch.bool)
        allowed[torch.from_numpy(self.index.ids)] = True
        allowed[self.eos] = True
        state = {"tails": list(tails), "seen": width}
        stops = [self._bytes(s) for s in stop]

        class ValidOnly(LogitsProcessor):
            def __call__(self, input_ids, scores):
                if input_ids.shape[1] > state["seen"]:  # one new token per row since the last call
                    state["seen"] = input_ids.shape[1]
                    for r, tok in enumerate(input_ids[:, -1].tolist()):
                        if tok != blm.eos and state["tails"][r] is not None:
                            state["tails"][r] = blm.canonical.tail(state["tails"][r], tok)
                mask = (~allowed).repeat(len(scores), 1)
                for r, tail in enumerate(state["tails"]):
                    if tail is not None:
                        mask[r, torch.from_numpy(blm.canonical.invalid_after(tail))] = True
                return scores.masked_fill(mask.to(scores.device), -math.inf)

        class Budget(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = []
                for row in input_ids[:, width:].tolist():
                    data = blm.vocab.decode_bytes(t for t in row if t != blm.eos)
                    done.append(len(data) >= max_new_bytes or any(s in data for s in stops) or blm.eos in row)
                return torch.tensor(done, device=input_ids.device)

        ids = torch.full((len(rows), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        if seed is not None:
            torch.manual_seed(seed)
        options = dict(do_sample=sampling.temperature > 0, max_new_tokens=max_new_bytes, pad_token_id=self.eos,
                       eos_token_id=self.eos, logits_processor=LogitsProcessorList([ValidOnly()]),
                       stopping_criteria=StoppingCriteriaList([Budget()]))
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p)
        else:
            options.update(temperature=None, top_k=None, top_p=None)
        if cache is not None:
            if cache.get_seq_length() != width - 1 or self.lm.trunk != rows[0][:-1]:
                cache = None  # not the row's prefix after all: let `generate` prefill
            else:
                options[self.lm._cache_arg] = cache
        model = self.lm.model
        out = model.generate(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device), **options)
        if cache is not None:
            self.lm.reset([])  # `generate` grew the trunk's cache: start clean next time
        self.lm.calls += out.shape[1] - width
        return [self.vocab.decode_bytes(t for t in row if t != self.eos) for row in out[:, width:].tolist()]

    def heal(self, prompt: str | bytes, temperature: float = 0.0, seed: int | None = None) -> bytes:
        """Prompt-boundary completion: the bytes that finish the token the prompt ends inside
        (empty when the chosen cover ends exactly at the prompt's end)."""
        stream = ByteStream(self, self._bytes(prompt), speculate=0)
        _, _, out = stream.resolve(np.random.default_rng(seed), Sampling(temperature))
        return out

    def fill_in_middle(self, prefix: str | bytes, suffix: str | bytes, max_new_bytes: int = 128, **kwargs):
        """Generate the middle between `prefix` and `suffix` with the model's FIM tokens
        (prefix-suffix-middle order); keyword arguments as for `generate`."""
        names = next((n for n in _FIM_NAMES if all(self._special_id(t) is not None for t in n)), None)
        if names is None:
            raise TokenSurgeryError(f"{self.name} has no fill-in-the-middle tokens (looked for "
                                    f"{', '.join('/'.join(n) for n in _FIM_NAMES)})")
        prompt = names[0].encode() + self._bytes(prefix) + names[1].encode() + self._bytes(suffix) + names[2].encode()
        return self.generate(prompt, max_new_bytes=max_new_bytes, **kwargs)
