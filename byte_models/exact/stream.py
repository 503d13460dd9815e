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
    distribution, `advance(byte)` extends the prefix. A step that needs a model call also
    evaluates, in the same batched call, up to `speculate` tokens whose end the text is likely
    to reach (`_look_ahead`), so many bytes need no model call of their own. With `keep_kv`
    every evaluated node keeps its KV slot until the data leaves its branch, so no token is
    fed twice."""

    COMPACT_MIN = 512  # slots in the KV cache before dead branches are dropped

    def __init__(self, blm: CoverEngine, prompt: bytes, speculate: int = 8, keep_kv: bool = True):
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
        self._first = np.zeros((4, 256))  # what first byte follows tokens ending in each kind of byte

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
        self._retire(self.live, live)
        self.live = live
        if any(not n.evaluated for n in live):
            self._look_ahead(must=[n for n in live if not n.evaluated])
        if self.blm.keep_kv and len(self.blm.lm) > self._compact_at:
            self.blm.compact(self.live)
            self._compact_at = max(self.COMPACT_MIN, 2 * len(self.blm.lm))

    @staticmethod
    def _retire(old: Sequence[Node], live: Sequence[Node]) -> None:
        """Free what the text has left behind (a node's distribution takes ~0.8 MB with a
        49k vocabulary; kept, a long stream grew by ~1 MB per byte). A node that stops being
        live never is again (bytes only get added), and neither is any child of it that is not
        live or above a live node now, nor anything below that child: their distributions are
        dropped and they are cut from the tree (their KV slots go at the next compaction).
        Nodes above live ones keep their place (paths, slots) but not their distributions,
        which nothing reads again: only live nodes and the nodes evaluated ahead below them are read."""
        now = {id(n) for n in live}
        gone = [n for n in old if id(n) not in now]
        if not gone:
            return
        # Only the retired nodes and their children are looked up below, so the paths up from
        # the live nodes are followed no higher than they reach (not to the root: that would
        # make a long stream quadratic).
        floor, on_path = min(n.depth for n in gone), set()
        for node in live:
            n = node
            while n is not None and n.depth >= floor and id(n) not in on_path:
                on_path.add(id(n))
                n = n.parent
        for node in gone:
            node.forget()
            if id(node) not in on_path and node.parent is not None:
                node.parent.children.pop(node.token, None)
            stack = []
            for tok, child in list(node.children.items()):
                if id(child) not in on_path:
                    del node.children[tok]
                    stack.append(child)
            while stack:
                n = stack.pop()
                n.forget()
                stack.extend(n.children.values())

    def _look_ahead(self, must: Sequence[Node] = ()) -> None:
        """Evaluate the nodes needed now plus, in the same call, up to `speculate` future nodes
        whose chance of being needed before the next call is at least `AHEAD_MIN`.

        A live node whose token ends where the text reaches must be evaluated then, however
        little of the mass it carries; so a token t after a node n is worth evaluating ahead
        by the chance that the text runs through t's end, read off the live nodes'
        distributions (the mass each puts on tokens that spell the bytes from the current end
        to t's end). The candidates are the tokens that go on from the live nodes and, down to
        `AHEAD_DEPTH` levels, the children of nodes already evaluated ahead of the text (their
        chance: the parent's times the parent's mass on them); a node picked in this call has
        no distribution yet, so the one-byte token after it is guessed from what followed
        earlier tokens ending in the same kind of byte (letter, space, digit, punctuation).
        On the 2-core CPU a SmolLM2-135M call of 1 to 4 tokens costs ~27 ms (`LlamaCall`, ad
        hoc), more from 5 tokens on, and every token fed ~1 ms of bookkeeping (its float64
        distribution); filling calls up to 4 tokens with less likely candidates (chance 0.02-0.05)
        cut calls per byte by 11-16% but did not measurably speed streaming up (ad hoc, 300 bytes
        each of English, German and Python outside the benchmark's text), so only likely nodes
        pay for their rows."""
        targets = list(must)
        if self.speculate:
            targets += self._speculation()
        commit = _common_ancestor(self.live)
        if targets or (commit is not None and commit.slot < 0):
            self.blm.evaluate(targets, commit=commit)

    AHEAD_MIN = 0.3  # least chance that the text reaches a token's end, for evaluating it ahead
    AHEAD_DEPTH = 2  # levels below a live node searched for candidates

    def _speculation(self) -> list[Node]:
        index, blm, data, cap = self.blm.index, self.blm, bytes(self.data), self.speculate
        # Every live node whose token ends where the text reaches must be evaluated then,
        # however little of the mass it carries: so a token is worth evaluating ahead by the
        # chance that the *text* runs through its end, whichever cover carries the text. That
        # chance is read off the live nodes' distributions: each spells the next bytes with
        # one token (`text_chance` below).
        shares, logs = [], []
        for node in self.live:
            if node.evaluated:
                groups = node_groups(index, node, data[node.end :])
                total = float(groups.sum()) if groups is not None else 0.0
                if total > 0:
                    logs.append(node.logp + math.log(total))
                    shares.append(node)
                    if node.end == len(data) and node.token is not None:
                        self._learn_first(node, groups / total)
            else:
                logs.append(node.logp)
        if not shares:
            return []
        log_z = max(logs) + math.log(sum(math.exp(x - max(logs)) for x in logs))
        weights = [(n, math.exp(n.logp - log_z), data[n.end :]) for n in shares]

        def text_chance(more: bytes) -> float:
            total = 0.0
            for n, w, rest in weights:
                lo, hi = index.range(rest + more)
                if hi > lo:
                    total += w * float(n.cum[hi] - n.cum[lo])
            return min(total, 1.0)

        found: list[tuple[float, Node, int]] = []
        seen: dict[bytes, float] = {}
        # (node, the text's bytes from the current end to the node's end, chance of reaching it, level)
        stack = [(n, b"", 1.0, 0) for n in shares]
        while stack:
            node, ahead, reach, level = stack.pop()
            rest = data[node.end :] if not ahead else b""
            if len(rest) > index.max_len:
                continue
            lo, hi = index.range(rest)
            probs, cum = node.probs, node.cum
            rows = lo + np.flatnonzero((index.next_byte[lo:hi, len(rest)] >= 0) & (probs[lo:hi] > 0))
            if not len(rows):
                continue
            local = (cum[index.span_end[rows]] - cum[rows]) / max(float(cum[hi] - cum[lo]), 1e-300)
            if len(rows) > cap:
                top = np.argpartition(-local, cap)[:cap]
                rows, local = rows[top], local[top]
            for r, p in zip(rows.tolist(), local.tolist()):
                tok = int(index.ids[r])
                more = ahead + blm.vocab.surface[tok][len(rest) :]
                if not ahead:
                    if more not in seen:
                        seen[more] = text_chance(more)
                    chance = seen[more]
                else:
                    chance = reach * p
                if chance < self.AHEAD_MIN:
                    continue
                child = node.children.get(tok)
                if child is not None and child.evaluated:
                    if level + 1 < self.AHEAD_DEPTH and child.logp > -math.inf:
                        stack.append((child, more, chance, level + 1))
                    continue
                found.append((chance, node, tok))
        found.sort(key=lambda f: -f[0])
        out = [(c, self.blm.child(node, tok)) for c, node, tok in found[:cap]]
        # A token picked now has no distribution yet, so its own children cannot be ranked by
        # it: the byte right after it is guessed from what followed earlier tokens that end in
        # the same kind of byte, and the one-byte token for that byte is evaluated with it.
        grand = []
        for c, child in out:
            prior = self._first[_byte_class(blm.vocab.surface[child.token][-1:])]
            for b in np.flatnonzero(c * prior >= self.AHEAD_MIN).tolist():
                tok = blm.byte_token(b)
                if tok is not None and blm.canonical.valid_next(child.tail, tok):
                    grand.append((c * float(prior[b]), child, tok))
        merged = sorted([(c, n, None) for c, n in out] + grand, key=lambda f: -f[0])[:cap]
        return [node if tok is None else self.blm.child(node, tok) for _, node, tok in merged]

    def _learn_first(self, node: Node, first: np.ndarray) -> None:
        """Running average of the next token's first byte after tokens ending in each kind of byte."""
        k = _byte_class(self.blm.vocab.surface[node.token][-1:])
        self._first[k] = 0.8 * self._first[k] + 0.2 * first[:256]

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


def _byte_class(last: bytes) -> int:
    """0 letters and non-ASCII, 1 whitespace, 2 digits, 3 other ASCII (punctuation)."""
    if not last:
        return 3
    b = last[0]
    if b >= 0x80 or chr(b).isalpha():
        return 0
    if chr(b).isspace():
        return 1
    return 2 if chr(b).isdigit() else 3


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
