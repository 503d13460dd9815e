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
    the same batched call), so most bytes need no model call of their own."""

    def __init__(self, blm: CoverEngine, prompt: bytes, speculate: int = 8):
        self.blm = blm
        self.speculate = speculate
        context, region = blm.split_prompt(prompt)
        self.context = context
        self.data = bytearray(region)
        root = blm.root(context)
        nodes = blm.tree(root, region)
        reach = [n for n in nodes if n.end == len(region) or blm.index.range(region[n.end:])[1] > blm.index.range(region[n.end:])[0]]
        # Only nodes in `reach` can be live. Their common ancestor's probability is a common
        # factor, so only its subtree is evaluated (the path to it joins the trunk); inside
        # it, nodes outside `reach` just pass log-probabilities on to their children.
        top = _common_ancestor(reach) if reach else root
        nodes = [n for n in nodes if _descends(n, top)]
        near = {id(n) for n in reach}
        blm.evaluate(nodes, commit=top, full=lambda n: id(n) in near)
        self.live = [n for n in nodes if n.probs is not None and self._is_live(n)]
        for n in nodes:
            if not any(n is m for m in self.live):
                n.probs = n.cum = None
        if not self.live:
            raise ZeroProbability(f"the prompt cannot be spelled by any valid token sequence of {blm.name}")
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
        if any(n.probs is None for n in live):
            self._look_ahead(must=[n for n in live if n.probs is None])

    def _look_ahead(self, must: Sequence[Node] = ()) -> None:
        """Evaluate the nodes needed now plus the `speculate` future nodes most likely to be
        needed: a token that continues a live node is ranked by the mass of all tokens that
        start with its bytes (the chance that the text will pass through its end)."""
        targets = list(must)
        if self.speculate:
            index, cands = self.blm.index, []
            ref = max(n.logp for n in self.live)
            for node in self.live:
                rest = bytes(self.data[node.end :])
                lo, hi = index.range(rest)
                if node.probs is None or hi <= lo or len(rest) > index.max_len:
                    continue
                rows = lo + np.flatnonzero(index.next_byte[lo:hi, len(rest)] >= 0)
                rows = rows[np.argsort(-node.probs[rows])[: 4 * self.speculate]]
                weight = math.exp(node.logp - ref)
                for r in rows:
                    tok = int(index.ids[r])
                    child = node.children.get(tok)
                    if node.probs[r] <= 0 or (child is not None and child.probs is not None):
                        continue
                    slo, shi = index.range(index.surfaces[r])
                    cands.append((weight * (node.cum[shi] - node.cum[slo]), node, tok))
            cands.sort(key=lambda c: -c[0])
            for _, node, tok in cands[: self.speculate]:
                child = node.children.get(tok)
                if child is None:
                    end = node.end + len(self.blm.vocab.surface[tok])
                    child = Node(node, tok, end, math.nan, self.blm.canonical.tail(node.tail, tok), node.depth + 1)
                    node.children[tok] = child
                    self.blm.child_logprob(node, child)
                targets.append(child)
        commit = _common_ancestor(self.live)
        if targets or (commit is not None and not commit.committed):
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
