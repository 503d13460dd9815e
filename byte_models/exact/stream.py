"""ByteStream: the live cover tree after a byte prefix, for next-byte distributions while
bytes arrive one at a time (the future is unknown), and the exact draw of a covering token
that `ByteLM.generate` and `ByteLM.heal` start from."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from tokensurgery.errors import TokenSurgeryError

from .cover_tree import Accumulator, Node, ZeroProbability, node_groups

if TYPE_CHECKING:
    from .byte_lm import Sampling
    from .engine import CoverEngine


class ByteStream:
    """The live cover tree after a byte prefix: `logprobs()` gives the exact next-byte
    distribution, `advance(byte)` extends the prefix. After each step the most likely
    tokens that may end within the next bytes are evaluated ahead (`speculate` of them, in
    the same batched call), so most bytes need no model call of their own. With `keep_kv`
    every evaluated node keeps its KV slot until the data leaves its branch, so no token is
    fed twice."""

    COMPACT_MIN = 512  # slots in the KV cache before dead branches are dropped

    def __init__(self, blm: CoverEngine, prompt: bytes, speculate: int = 2, keep_kv: bool = True):
        context, region = blm.split_prompt(prompt)
        self._start(blm, context, region, speculate)
        root = blm.root(context, keep_kv=keep_kv, defer=True)  # the context goes in the tree's call
        nodes, top, near = self._plan(root)
        blm.evaluate(nodes, commit=top, full=lambda n: id(n) in near)
        self._finish(nodes)

    @classmethod
    def many(cls, blm: CoverEngine, prompts: Sequence[bytes], speculate: int = 0) -> list["ByteStream"]:
        """One stream per prompt, their contexts and cover trees evaluated together in packed
        calls (every node keeps its KV slot; batched generation hands those on)."""
        streams = [cls.__new__(cls) for _ in prompts]
        splits = [blm.split_prompt(p) for p in prompts]
        for s, (context, region) in zip(streams, splits):
            s._start(blm, context, region, speculate)
        roots = blm.roots([context for context, _ in splits])
        plans = [s._plan(root) for s, root in zip(streams, roots)]
        near = set().union(*(p[2] for p in plans))
        blm.evaluate([n for p in plans for n in p[0]], full=lambda n: id(n) in near)
        for s, p in zip(streams, plans):
            s._finish(p[0])
        return streams

    def _start(self, blm: CoverEngine, context: list[int], region: bytes, speculate: int) -> None:
        self.blm, self.speculate, self.context, self.data = blm, speculate, context, bytearray(region)
        self._compact_at = self.COMPACT_MIN

    def _plan(self, root: Node) -> tuple[list[Node], Node, set[int]]:
        """The nodes to evaluate along the prompt's free region, their top, and the ids of those
        that may be live (they need full distributions)."""
        blm, region = self.blm, bytes(self.data)
        nodes = blm.tree(root, region)
        reach = [n for n in nodes if n.end == len(region) or blm.index.range(region[n.end:])[1] > blm.index.range(region[n.end:])[0]]
        # Only nodes in `reach` can be live. Their common ancestor's probability is a common
        # factor, so only its subtree is evaluated (the path to it joins the trunk); inside
        # it, nodes outside `reach` just pass log-probabilities on to their children.
        # Nodes that are neither in `reach` nor above a node in it carry no mass to the end of
        # the region: they are not evaluated at all.
        top = _common_ancestor(reach) if reach else root
        above: set[int] = set()
        for n in reach:
            while n is not None and id(n) not in above:
                above.add(id(n))
                n = n.parent
        return [n for n in nodes if id(n) in above and _descends(n, top)], top, {id(n) for n in reach}

    def _finish(self, nodes: list[Node]) -> None:
        self.live = [n for n in nodes if n.evaluated and n.logp > -math.inf and self._is_live(n)]
        live = {id(n) for n in self.live}
        for n in nodes:
            if id(n) not in live:
                n.forget()
        if not self.live:
            raise ZeroProbability(f"the prompt cannot be spelled by any valid token sequence of {self.blm.name}")
        self._look_ahead()

    def _is_live(self, node: Node) -> bool:
        rest = bytes(self.data[node.end :])
        if not rest:
            return True
        groups = node_groups(self.blm.index, node, rest)
        return groups is not None and groups[:256].sum() > 0

    def logprobs(self) -> np.ndarray:
        """Log-probabilities of bytes 0..255 and EOS (256) after the current prefix."""
        acc = Accumulator(1)
        for node in self.live:
            acc.add(0, node.logp, node_groups(self.blm.index, node, bytes(self.data[node.end :])))
        return acc.log_distributions()[0]

    def advance(self, byte: int) -> None:
        """Append one byte to the prefix."""
        if not 0 <= byte < 256:
            raise TokenSurgeryError(f"a byte is 0..255, got {byte}")
        self.data.append(byte)
        data, live = bytes(self.data), []
        for node in self.live:
            live += self.blm.grow(node, data, only=len(data) - node.end)
            if self._is_live(node):
                live.append(node)
        live = [n for n in live if n.logp > -math.inf]
        if not live:
            raise ZeroProbability(f"byte {byte:#04x} cannot follow {bytes(self.data[:-1][-20:])!r} under {self.blm.name}")
        self.live = live
        if any(not n.evaluated for n in live):
            self._look_ahead(must=[n for n in live if not n.evaluated])
        if self.blm.keep_kv and len(self.blm.lm) > self._compact_at:
            self.blm.compact(self.live)
            self._compact_at = max(self.COMPACT_MIN, 2 * len(self.blm.lm))

    def _look_ahead(self, must: Sequence[Node] = ()) -> None:
        """Evaluate the nodes needed now plus the `speculate` future nodes most likely to be
        needed: a token that continues a live node is needed when the text passes through its
        end, so it is ranked by the node's probability times the mass of every token that
        starts with the token's bytes."""
        targets = list(must)
        if self.speculate:
            index, blm = self.blm.index, self.blm
            ref = max(n.logp for n in self.live)
            scores, owners, rows_all = [], [], []
            for node in self.live:
                rest = bytes(self.data[node.end :])
                lo, hi = index.range(rest)
                if not node.evaluated or hi <= lo or len(rest) > index.max_len:
                    continue
                rows = lo + np.flatnonzero((index.next_byte[lo:hi, len(rest)] >= 0) & (node.probs[lo:hi] > 0))
                mass = math.exp(node.logp - ref) * (node.cum[index.span_end[rows]] - node.cum[rows])
                if len(rows) > 4 * self.speculate:
                    top = np.argpartition(-mass, 4 * self.speculate)[: 4 * self.speculate]
                    rows, mass = rows[top], mass[top]
                scores.append(mass)
                rows_all.append(rows)
                owners += [node] * len(rows)
            if owners:
                mass, rows = np.concatenate(scores), np.concatenate(rows_all)
                picked = 0
                for i in np.argsort(-mass):
                    if picked == self.speculate or mass[i] <= 0:
                        break
                    node, tok = owners[i], int(index.ids[rows[i]])
                    child = node.children.get(tok)
                    if child is not None and child.evaluated:
                        continue
                    if child is None:
                        end = node.end + len(blm.vocab.surface[tok])
                        child = Node(node, tok, end, math.nan, blm.canonical.tail(node.tail, tok), node.depth + 1)
                        node.children[tok] = child
                        blm.child_logprob(node, child)
                    targets.append(child)
                    picked += 1
        commit = _common_ancestor(self.live)
        if targets or (commit is not None and commit.slot < 0):
            self.blm.evaluate(targets, commit=commit)

    def resolve(self, rng, sampling: Sampling) -> tuple[Node, int | None, bytes]:
        """Draw one cover of the prefix: (node, token, its bytes past the prefix); token None
        means EOS. Covers are weighted by their exact probability, P(node) * p(token | node);
        `sampling` reshapes that distribution (temperature 0: the most likely cover)."""
        index, nodes, tokens, logw = self.blm.index, [], [], []
        for node in self.live:
            rest = bytes(self.data[node.end :])
            lo, hi = index.range(rest)
            if len(rest) > index.max_len or hi <= lo:
                continue
            rows = lo + np.flatnonzero(index.next_byte[lo:hi, len(rest)] >= 0)
            rows = rows[node.probs[rows] > 0]
            with np.errstate(divide="ignore"):
                logw.append(node.logp + np.log(np.append(node.probs[rows], node.eos if not rest else 0.0)))
            tokens.append(np.append(index.ids[rows], -1))
            nodes += [node] * (len(rows) + 1)
        if not nodes:
            raise ZeroProbability(f"no valid token continues the prompt under {self.blm.name}")
        logw, tokens = np.concatenate(logw), np.concatenate(tokens)
        shaped = sampling.apply(torch.from_numpy(logw - logw.max()).log_softmax(-1)).numpy()
        if sampling.temperature <= 0:
            pick = int(np.argmax(shaped))
        else:
            p = np.exp(shaped)
            pick = int(rng.choice(len(p), p=p / p.sum()))
        node, tok = nodes[pick], int(tokens[pick])
        if tok < 0:
            return node, None, b""
        return node, tok, self.blm.vocab.surface[tok][len(self.data) - node.end :]


def _descends(node: Node, ancestor: Node) -> bool:
    """Is `ancestor` the node itself or one of its ancestors?"""
    while node is not None and node.depth >= ancestor.depth:
        if node is ancestor:
            return True
        node = node.parent
    return False


def _common_ancestor(nodes: Sequence[Node]) -> Node | None:
    """Deepest node that is an ancestor-or-self of every node given."""
    if not nodes:
        return None
    paths = []
    for node in nodes:
        path, n = [], node
        while n is not None:
            path.append(n)
            n = n.parent
        paths.append(path[::-1])
    common = None
    for column in zip(*paths):
        if all(c is column[0] for c in column):
            common = column[0]
        else:
            break
    return common
