"""CoverEngine: the cover tree of a tokenized LM over a byte string, and how its nodes are evaluated.

A node is a token sequence (a path from the root) whose bytes cover a prefix of the data; its
probability is the token model's. The engine builds nodes along known bytes (`tree`, `grow`),
evaluates their next-token distributions in batched tree-attention calls (`evaluate`,
`evaluate_tree`), and keeps the KV slots of the branches it will extend (`TreeLM`). `ByteLM` (known text,
generation) and `ByteStream` (bytes arriving one at a time) are both built on this API.
It does not sample or score by itself, and it knows nothing about byte distributions beyond
the per-node token probabilities (`cover_tree.py` turns those into byte masses).
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.surface_index import SurfaceIndex
from tokensurgery.vocabulary import TokenKind, Vocabulary

from .canonical import canonical_for
from .cover_tree import Node, set_distribution
from .tree_lm import Query, TreeLM


class CoverEngine:
    """Cover-tree operations over one model and its `Vocabulary` (see the module docstring).

    `start` is the token that begins a document when the prompt has no special tokens
    ("auto": the BOS the tokenizer adds, else `<|endoftext|>`, else the BOS role).
    `settle_bytes`: prompt text further than this before the end is taken in its canonical
    tokenization (exact whenever no valid encoding of the prompt's end reaches back that far).
    """

    def __init__(self, model, vocab: Vocabulary, start: int | str | None = "auto", eos: int | None = None,
                 settle_bytes: int = 96, name: str = ""):
        self.vocab = vocab
        self.name = name or vocab.name
        self.canonical = canonical_for(vocab)
        self.index = SurfaceIndex(vocab.surface, np.flatnonzero(self.canonical.continuable).tolist())
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < len(vocab):
            raise TokenSurgeryError(f"the model has {rows} output rows but the tokenizer has {len(vocab)} tokens")
        self.lm = TreeLM(model)
        self._deferred: Node | None = None  # a root whose context goes in the next call (`root(defer=True)`)
        self.keep_kv, self._context_slots, self._slot_nodes = False, 0, []
        # tokens the tokenizer matches in text before anything else (specials, added tokens), by
        # surface; and the special tokens by name (start, end, fill-in-the-middle)
        self._specials: dict[bytes, int] = {}
        self._special_ids: dict[str, int] = {}
        for i, k in enumerate(vocab.kinds):
            if k in (TokenKind.SPECIAL, TokenKind.ADDED, TokenKind.UNUSED) and vocab.surface[i]:
                self._specials.setdefault(vocab.surface[i], i)
            if k == TokenKind.SPECIAL:
                self._special_ids.setdefault(vocab.tokens[i], i)
        self.start = self._start_token(start)
        self.eos = eos if eos is not None else self._document_end()
        self.settle_bytes = settle_bytes
        longest_first = sorted(self._specials, key=len, reverse=True)
        self._special_re = re.compile(b"|".join(map(re.escape, longest_first))) if longest_first else None
        # SentencePiece conversions that add a word-start space (Llama-2, Mistral v1-v3) spell
        # " " + text; their decoder drops that space. The byte model is over the text, so the
        # space is a hidden first byte of the text: at the document start, and after each special
        # token where the tokenizer adds it there too (a `Prepend` normalizer does; Metaspace's
        # `prepend_scheme="first"` does not). Asked of the tokenizer itself.
        self._hidden_start = self._hidden_after_special = b""
        if vocab.prepends_space:
            self._hidden_start = b" " if vocab.decode_bytes(vocab.encode("a")) == b" a" else b""
            special = next(iter(self._specials), None)
            if special is not None:
                after = vocab.encode(special.decode("utf-8", "replace") + "a")
                self._hidden_after_special = b" " if vocab.decode_bytes(after[1:]) == b" a" else b""



    # ---- construction helpers ---------------------------------------------------------

    def _special_id(self, content: str) -> int | None:
        return self._special_ids.get(content)

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

    def split_prompt(self, data: bytes) -> tuple[list[int], bytes]:
        """Context token ids (start token, everything up to the last special token in the
        prompt, and a settled canonical prefix) and the free byte region after them (which
        begins with the hidden word-start space of tokenizers that add one)."""
        ids, pos, hidden = [self.start], 0, self._hidden_start
        if self._special_re is not None:
            for m in self._special_re.finditer(data):  # longest match first, left to right
                if m.end() == len(data) and any(len(s) > len(m.group()) and s.startswith(m.group()) for s in self._specials):
                    break  # the text may go on into a longer one (Gemma's "\n" and "\n\n"): not settled
                section = data[pos : m.start()]
                ids += (self.vocab.decompose(hidden + section) if section else []) + [self._specials[m.group()]]
                pos, hidden = m.end(), self._hidden_after_special
        region = hidden + data[pos:]
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

    def root(self, context: list[int], keep_kv: bool = False, defer: bool = False) -> Node:
        """A new tree after `context` (the cache starts over with it). With `keep_kv`, every
        node evaluated later keeps its KV slot, so no token is fed twice (streaming; `compact`
        drops dead branches); without, only committed chains do (known text, where each node
        is evaluated once). With `defer` the context is fed with the first `evaluate` call
        (one call instead of two); until then the root is not evaluated and its children
        have no log-probability."""
        logprobs = self.lm.reset(context, defer=defer)
        self.keep_kv, self._context_slots = keep_kv, len(context)
        root = Node(None, None, 0, 0.0, (), slot=len(context) - 1)
        self._slot_nodes: list[Node | None] = [None] * (len(context) - 1) + [root]
        self._deferred = root if defer else None
        if not defer:
            self._set(root, logprobs)
        return root

    def roots(self, contexts: Sequence[list[int]]) -> list[Node]:
        """New trees after each of several contexts (batched prompts): the cache starts over
        with every context as its own chain, fed in packed calls; every node evaluated later
        keeps its KV slot."""
        self.lm.reset([])
        self._deferred = None
        slots, logprobs = self.lm.feed_chains(contexts)
        self.keep_kv, self._context_slots = True, len(self.lm)
        self._slot_nodes = [None] * len(self.lm)
        out = []
        for slot, lp in zip(slots, logprobs):
            root = Node(None, None, 0, 0.0, (), slot=slot)
            self._slot_nodes[slot] = root
            self._set(root, lp)
            out.append(root)
        return out

    def _set(self, node: Node, logprobs: torch.Tensor) -> None:
        """Store the node's next-token distribution (invalid continuations at 0) and give its
        existing children their log-probabilities."""
        probs = logprobs[torch.from_numpy(self.index.ids)].exp().numpy().copy()
        tail = node.tail
        set_distribution(node, probs, math.exp(float(logprobs[self.eos])),
                         invalid=lambda: self.index.position[self.canonical.invalid_after(tail)])
        for child in node.children.values():
            self.child_logprob(node, child)

    def child_logprob(self, node: Node, child: Node) -> None:
        p = node.probs[self.index.position[child.token]]
        child.logp = node.logp + math.log(p) if p > 0 else -math.inf

    def evaluate(self, targets: Sequence[Node], commit: Node | None = None, full=None) -> None:
        """Give every target its next-token distribution in as few calls as fit; `commit`
        (a descendant of a cached node) and its ancestors are fed first and keep their KV slots,
        and so does every other node fed when the tree keeps KV (`root(keep_kv=True)`). A node
        whose parent has no slot is fed with its uncached ancestors. Nodes for which
        `full(node)` is false only pass log-probabilities on to their children."""
        chain: list[Node] = []
        n = commit
        while n is not None and n.slot < 0:
            chain.append(n)
            n = n.parent
        chain.reverse()
        pending = sorted({id(t): t for t in targets if not t.evaluated}.values(), key=lambda t: t.depth)
        while chain or pending:
            tokens, parents, anchor, nodes, at = [], [], [], [], {}
            for node in chain:
                self._pack(node, tokens, parents, anchor, nodes, at)
            rest, partial = [], False
            for t in pending:
                path, n = [], t
                while n.slot < 0 and id(n) not in at:
                    path.append(n)
                    n = n.parent
                room = self.lm.max_query - len(tokens)
                if len(path) > room:
                    rest.append(t)
                    if len(tokens) > len(chain) or room < 1:
                        continue
                    # a path longer than one call holds: its first part now, kept as the
                    # context of the rest, which goes in the next call
                    path, partial = path[-room:], True
                for node in reversed(path):
                    self._pack(node, tokens, parents, anchor, nodes, at)
            keep = len(tokens) if self.keep_kv or partial else len(chain)
            out = self.lm.forward(Query(tokens, parents, anchor, keep=keep))
            self._settle_deferred(full)
            base = len(self.lm) - keep
            for i, node in enumerate(nodes[:keep]):
                node.slot = base + i
                self._slot_nodes.append(node)
            for i, node in enumerate(nodes):  # parents come before children
                if not node.evaluated:
                    self._give(node, out[i], full)
            chain, pending = [], rest
        if self._deferred is not None:  # nothing was fed: the context alone
            self.lm.forward(Query([], [], []))
            self._settle_deferred(full)

    def _give(self, node: Node, logprobs: torch.Tensor, full) -> None:
        if full is None or full(node):
            self._set(node, logprobs)
        else:
            for child in node.children.values():
                child.logp = node.logp + float(logprobs[child.token])

    def _settle_deferred(self, full) -> None:
        """After a call that fed a deferred context: the root's distribution, before any
        node below it (their log-probabilities start from it)."""
        if self._deferred is not None and self.lm.trunk_logprobs is not None:
            root, self._deferred = self._deferred, None
            self._give(root, self.lm.trunk_logprobs, full)

    @staticmethod
    def _pack(node: Node, tokens, parents, anchor, nodes, at) -> None:
        at[id(node)] = len(tokens)
        tokens.append(node.token)
        nodes.append(node)
        if id(node.parent) in at:
            parents.append(at[id(node.parent)])
            anchor.append(-1)
        else:
            parents.append(-1)
            anchor.append(node.parent.slot)

    def compact(self, live: Sequence[Node]) -> None:
        """Drop the KV slots of every node that is neither an ancestor nor a descendant of a
        `live` node (the branches the data has left behind); the context's slots stay."""
        keep, stack = set(range(self._context_slots)), []
        for node in live:
            n = node.parent
            while n is not None and n.slot >= 0 and n.slot not in keep:
                keep.add(n.slot)
                n = n.parent
            stack.append(node)
        while stack:
            n = stack.pop()
            if n.slot >= 0:
                keep.add(n.slot)
            stack.extend(c for c in n.children.values() if c.slot >= 0)
        new = self.lm.compact(sorted(keep))
        nodes: list[Node | None] = [None] * len(self.lm)
        for s, node in enumerate(self._slot_nodes):
            if node is not None:
                node.slot = new[s]
                if node.slot >= 0:
                    nodes[node.slot] = node
        self._slot_nodes = nodes

    def byte_token(self, b: int) -> int | None:
        """The indexed token whose surface is the one byte `b`, None if there is none."""
        tok = self.vocab.by_bytes.get(bytes([b]))
        position = self.index.position
        return tok if tok is not None and tok < len(position) and position[tok] >= 0 else None

    def child(self, node: Node, tok: int) -> Node:
        """The node for `tok` after `node`, made if new (its log-probability is NaN until
        `node` has a distribution). Does not check that `tok` may follow `node`."""
        child = node.children.get(tok)
        if child is None:
            end = node.end + len(self.vocab.surface[tok])
            child = Node(node, tok, end, math.nan, self.canonical.tail(node.tail, tok), node.depth + 1)
            node.children[tok] = child
            if node.evaluated:
                self.child_logprob(node, child)
        return child

    # ---- the tree over known bytes ----------------------------------------------------------

    def grow(self, node: Node, data: bytes, only: int | None = None) -> list[Node]:
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
                if tok not in node.children and (node.evaluated and node.probs[r] == 0
                                                 or not self.canonical.valid_next(node.tail, tok)):
                    continue
                out.append(self.child(node, tok))
        return out

    def tree(self, root: Node, data: bytes) -> list[Node]:
        """Every valid node along `data`, ordered by end (parents before children)."""
        by_end: list[list[Node]] = [[] for _ in range(len(data) + 1)]
        by_end[0].append(root)
        ordered = []
        for j in range(len(data) + 1):
            for node in by_end[j]:
                ordered.append(node)
                for child in self.grow(node, data):
                    by_end[child.end].append(child)
        return ordered

    def evaluate_tree(self, nodes: list[Node], commit_to: Node | None, on_node=None) -> None:
        """Evaluate all nodes (ordered by end) in chunks; the branch to `commit_to` joins the
        trunk as it goes so side branches fork from the KV cache. `on_node(node)` runs once a
        node's distribution and log-probability are both known."""
        main: dict[int, Node] = {}
        n = commit_to
        while n is not None:
            main[id(n)] = n
            n = n.parent
        todo = [n for n in nodes if not n.evaluated]
        if on_node:
            for node in nodes:
                if node.evaluated:
                    on_node(node)
        step = max(1, self.lm.max_query // 2)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            commit = None
            for node in chunk:
                if id(node) in main:
                    commit = node
            self.evaluate(chunk, commit=commit)
            if on_node:
                for node in chunk:
                    on_node(node)

