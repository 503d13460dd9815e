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

The cover-tree machinery all three share is `CoverEngine` (`engine.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.evaluate import Score
from tokensurgery.vocabulary import Vocabulary

from .cover_tree import EOS, Accumulator, Node, ZeroProbability, node_groups
from .engine import CoverEngine
from .stream import ByteStream

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
class ByteScore(Score):
    """Byte-level log-likelihood of a text: `logprobs[i]` = log P(byte i | bytes before); a
    `Score` whose positions are the bytes themselves."""

    logprobs: np.ndarray | None = None
    eos_logprob: float | None = None
    renormalisation: float = 0.0  # see ByteLM.score

    @classmethod
    def of(cls, logprobs: np.ndarray, eos_logprob: float | None = None, name: str = "text") -> "ByteScore":
        return cls(name, len(logprobs), len(logprobs), -float(logprobs.sum()) / math.log(2), logprobs, eos_logprob)

    @property
    def total(self) -> float:
        """Natural-log likelihood of the text (and of its end, when scored)."""
        return float(self.logprobs.sum() + (self.eos_logprob or 0.0))


def draw_byte(logprobs: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """A byte (or EOS, 256) from a next-byte distribution: the most likely at temperature 0 or
    below, else a draw at that temperature."""
    if temperature <= 0:
        return int(np.argmax(logprobs))
    p = np.exp((logprobs - logprobs.max()) / temperature)
    return int(rng.choice(len(p), p=p / p.sum()))


class ByteLM(CoverEngine):
    """Exact next-byte view of a causal LM and its tokenizer (see the module docstring).

    `model` is a transformers causal LM; `vocab` the `Vocabulary` of its tokenizer; `start`,
    `eos`, `settle_bytes` as for `CoverEngine`. `speculate`: at most this many tokens evaluated
    ahead in a streaming call (`stream`), each only when the text reaches its end with a
    chance of at least `ByteStream.AHEAD_MIN` (0.3); 0 turns look-ahead off. results/byte_lm.md
    measures look-ahead 0, 2, 8 and 16.
    """

    def __init__(self, model, vocab: Vocabulary, start: int | str | None = "auto", eos: int | None = None,
                 settle_bytes: int = 96, speculate: int = 8, name: str = ""):
        super().__init__(model, vocab, start=start, eos=eos, settle_bytes=settle_bytes, name=name)
        self.speculate = speculate

    @classmethod
    def from_pretrained(cls, spec: str | Path, dtype: str = "float32", device: str = "cpu", progress: bool = True,
                        **kwargs) -> "ByteLM":
        """Load a bundled alias (`smollm2-135m`, `gemma3-270m`), local folder, `.gguf` or hub id
        (a first GGUF import takes 30-90 s; `progress` reports it on stderr)."""
        from tokensurgery.evaluate import load_causal_lm
        from tokensurgery.inputs import open_model

        folder = open_model(spec, progress=progress)
        model, vocab = load_causal_lm(folder, dtype=dtype, device=device)
        kwargs.setdefault("name", str(spec))
        return cls(model, vocab, **kwargs)

    # ---- public API: known text -------------------------------------------------------

    def _accumulate(self, data: bytes, context: bytes) -> tuple[Accumulator, int]:
        """Scaled next-byte masses at every position of region+data (see `distributions`)."""
        ids, region = self.split_prompt(context)
        full = region + data
        root = self.root(ids)
        nodes = self.tree(root, full)
        acc = Accumulator(len(full) + 1)
        first = len(region)

        def on_node(node: Node) -> None:
            for k in range(0, min(self.index.max_len, len(full) - node.end) + 1):
                groups = node_groups(self.index, node, full[node.end : node.end + k])
                if groups is None:
                    break
                if node.end + k >= first:
                    acc.add(node.end + k, node.logp, groups)
            node.forget()  # fully used: keep memory bounded on long texts

        last = max(nodes, key=lambda n: (n.end, -n.depth))
        self.evaluate_tree(nodes, last, on_node)
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
        result = ByteScore.of(picked, float(dist[-1, EOS]) if eos else None)
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
        """Log-probabilities of the next byte (0..255) and of EOS (index 256) after `prefix`.
        One-shot: no look-ahead (use `stream` to go on byte by byte)."""
        return self.stream(self._bytes(context) + self._bytes(prefix), speculate=0).logprobs()

    # ---- public API: unknown continuation -----------------------------------------------------

    def stream(self, prompt: str | bytes = b"", speculate: int | None = None) -> "ByteStream":
        """A live cover tree after `prompt`: read `.logprobs()`, `.advance(byte)`, repeat."""
        return ByteStream(self, self._bytes(prompt), self.speculate if speculate is None else speculate)

    def generate(self, prompt: str | bytes | Sequence[str | bytes] = b"", max_new_bytes: int | Sequence[int] = 128,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, stop: Iterable[str | bytes] = (),
                 seed: int | None = None, as_bytes: bool = False):
        """Continue `prompt` (or each prompt of a list, batched), which may end mid-token or
        mid-character. The prompt's end is resolved by drawing one covering token from the
        exact byte-level distribution; then ordinary token sampling goes on (transformers'
        `generate`, batched over prompts) with every step restricted to tokens the canonical
        rule allows. Sampling options act on each token (temperature 0: greedy). A list of
        `max_new_bytes` gives each prompt its own budget (a row stops at its own). Returns the
        new text (a list for a list of prompts)."""
        batch = isinstance(prompt, (list, tuple))
        prompts = [self._bytes(p) for p in (prompt if batch else [prompt])]
        limits = [max_new_bytes] * len(prompts) if isinstance(max_new_bytes, int) else list(max_new_bytes)
        if len(limits) != len(prompts) or any(not isinstance(n, int) or n < 0 for n in limits):
            raise TokenSurgeryError(f"max_new_bytes must be a count of bytes (0 or more) or one per prompt "
                                    f"({len(prompts)}), got {max_new_bytes!r}")
        sampling = Sampling(temperature, top_k, top_p)
        rng = np.random.default_rng(seed)
        rows, outs, tails, ends = [], [], [], []
        for stream in ByteStream.many(self, prompts):  # every prompt's end resolved in packed calls
            node, token, out = stream.resolve(rng, sampling)
            rows.append(None if token is None else stream.context + node.path() + [token])
            tails.append(None if token is None else self.canonical.tail(node.tail, token))
            ends.append(node)
            outs.append(out)
        live = [r for r, row in enumerate(rows) if row is not None and limits[r] > len(outs[r])]
        if live:
            cache = self._handover([ends[r] for r in live], [rows[r] for r in live])
            new = self._continue([rows[r] for r in live], [tails[r] for r in live], [limits[r] - len(outs[r]) for r in live],
                                 sampling, seed, stop, cache)
            for r, data in zip(live, new):
                outs[r] += data
        stops = [self._bytes(s) for s in stop]
        for r, out in enumerate(outs):
            for s in stops:
                if s in out:
                    out = out[: out.index(s)]
            outs[r] = out[: limits[r]] if as_bytes else out[: limits[r]].decode("utf-8", "replace")
        return outs if batch else outs[0]

    def generate_bytes(self, prompt: str | bytes = b"", max_new_bytes: int = 128, temperature: float = 1.0,
                       stop: Iterable[str | bytes] = (), seed: int | None = None, as_bytes: bool = False):
        """Continue `prompt` one byte at a time from the exact next-byte distribution: at
        temperature 0 the most likely byte each time (byte-greedy), else a draw from the
        distribution at that temperature; EOS ends the text. Byte-greedy need not equal
        `generate`'s greedy output, which is greedy per token after the prompt's boundary. One
        streaming step per byte, so slower than `generate`. Not handled: top-k/top-p (they
        act on tokens in `generate`)."""
        if temperature < 0:
            raise TokenSurgeryError(f"temperature must be 0 or more, got {temperature}")
        stream = self.stream(self._bytes(prompt))
        rng = np.random.default_rng(seed)
        stops = [self._bytes(s) for s in stop]
        out = bytearray()
        while len(out) < max_new_bytes:
            byte = draw_byte(stream.logprobs(), temperature, rng)
            if byte == EOS:
                break
            out.append(byte)
            if any(s in out for s in stops) or len(out) == max_new_bytes:
                break
            stream.advance(byte)
        data = bytes(out)
        for s in stops:
            if s in data:
                data = data[: data.index(s)]
        return data if as_bytes else data.decode("utf-8", "replace")

    def _handover(self, nodes: list[Node], rows: list[list[int]]):
        """A left-padded KV cache of every row but its last token, gathered from the slots of
        each node's path (context included), for `generate` to go on from without a prefill;
        None when a path is not fully cached."""
        from transformers import DynamicCache

        width = max(map(len, rows))
        paths = []
        for node, row in zip(nodes, rows):
            path = self.lm.path(node.slot)
            if node.slot < 0 or [self.lm.slot_token[s] for s in path] != row[:-1]:
                return None
            paths.append(path)
        cache = DynamicCache()
        for i, layer in enumerate(self.lm.cache.layers):
            keys = layer.keys.new_zeros(len(rows), *layer.keys.shape[1:2], width - 1, layer.keys.shape[-1])
            values = layer.values.new_zeros(len(rows), *layer.values.shape[1:2], width - 1, layer.values.shape[-1])
            for r, path in enumerate(paths):
                idx = torch.tensor(path, device=layer.keys.device)
                keys[r, :, width - 1 - len(path):] = layer.keys[0].index_select(-2, idx)
                values[r, :, width - 1 - len(path):] = layer.values[0].index_select(-2, idx)
            cache.update(keys, values, i)
        return cache

    def _continue(self, rows: list[list[int]], tails: list, budgets: list[int], sampling: Sampling, seed, stop,
                  cache=None) -> list[bytes]:
        """Token sampling with transformers' `generate` from token rows (left-padded), masked
        to valid continuations, each row until it has its budget of bytes; returns each row's
        new bytes. `cache` (from `_handover`) holds the KV of every row but its last token."""
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
                for row, budget in zip(input_ids[:, width:].tolist(), budgets):
                    data = blm.vocab.decode_bytes(t for t in row if t != blm.eos)
                    done.append(len(data) >= budget or any(s in data for s in stops) or blm.eos in row)
                return torch.tensor(done, device=input_ids.device)

        ids = torch.full((len(rows), width), self.eos, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        if seed is not None:
            torch.manual_seed(seed)
        options = dict(do_sample=sampling.temperature > 0, max_new_tokens=max(budgets), pad_token_id=self.eos,
                       eos_token_id=self.eos, logits_processor=LogitsProcessorList([ValidOnly()]),
                       stopping_criteria=StoppingCriteriaList([Budget()]))
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p)
        else:
            options.update(temperature=None, top_k=None, top_p=None)
        if cache is not None:
            options[self.lm._cache_arg] = cache
        model = self.lm.model
        with self.lm.layers():  # the decoding steps run the layers as the tree's calls do
            out = model.generate(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device), **options)
        self.lm.calls += out.shape[1] - width
        return [self.vocab.decode_bytes(t for t in row if t != self.eos) for row in out[:, width:].tolist()]

    def heal(self, prompt: str | bytes, temperature: float = 0.0, seed: int | None = None) -> bytes:
        """Prompt-boundary completion: the bytes that finish the token the prompt ends inside
        (empty when the chosen cover ends exactly at the prompt's end)."""
        stream = ByteStream(self, self._bytes(prompt), speculate=0, keep_kv=False)
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
