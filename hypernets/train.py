"""Training a hypernetwork for a frozen base LM (ZeTT recipe, sized for small machines).

1. Identity warm-up: predict the base's own rows of single base tokens (MSE in units of
   the base embeddings' per-dimension std).
2. LM phase: every step samples a unigram tokenizer from the recent batches' substrings
   (`sampler.py`), encodes the batch with it, predicts embeddings for the tokens in the
   batch plus `negatives` random tokens of the sampled vocabulary (-1: all of it; the
   softmax runs over this active set), and trains on next-token cross-entropy through the
   frozen base, plus `aux_weight` x the identity loss on active tokens that are exactly one
   base token.

With `tokenizers="merges"` the LM phase instead trains for dynamic merging (`dynamic/`):
each batch is tokenized by the base, merged over the batch to a random reduction (up to
`max_reduction` fewer tokens; merges never cross `boundary`, drawn per step from a comma
list such as `pretokens,word`), and only the new tokens' rows are predicted; the base's
tokens keep its rows and the softmax runs over the base vocabulary plus the new tokens, as
`tokensurgery dynamic` uses them (`objective="whole"`, mode B of `dynamic score`). With
`objective="prefill"` a merged step trains for mode A instead: each text is cut at a segment
boundary drawn between 30% and 70% of its bytes, the contexts are merged over the batch, the
rest stays in the base's tokens and only its tokens are scored, over the base vocabulary; the
LM loss reaches only the new tokens' input rows (through the shared encoder and the input head).
That moves the shared encoder, and with it the output rows, away from what mode B needs (ad
hoc: 200 steps of `both` from `results/hypernet_smollm2_merges_word`, English at 12% fewer tokens
within words: mode A +1.45% -> +0.83%, mode B +3.31% -> +8.38%, and +3.12% with the old output
rows), so prefill steps add `output_anchor` x the mean squared distance, in the base's
per-dimension std units, of the predicted output rows from those of the run's starting point
(the `init` hypernetwork, else FVT). `objective="both"`: each merged step draws one of the two.
`whole_chars` and `tail` train for `dynamic score --whole-chars --tail N`: no merge takes a piece
of a UTF-8 character, and the prefill contexts keep their last `tail` segments in the base's tokens.
`tokenizers="mixed"`: each step draws unigram or merges.

Every step's data is a function of (seed, step, rank), so a resumed run continues exactly.
The loop (schedule, accumulation, checkpoints, logging, DDP under torchrun: each rank draws
its own data and tokenizer, rank 0 writes) is `tokensurgery.training.TrainLoop`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tokensurgery.corpus import Corpus
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.training import LoopConfig, TrainLoop, TrainResult
from tokensurgery.vocabulary import TokenKind

from .model import Hypernet, hypernet_for
from .pieces import PieceSplitter
from .sampler import UnigramSampler


TOKENIZERS = ("unigram", "merges", "mixed")
OBJECTIVES = ("whole", "prefill", "both")


@dataclass
class TrainConfig(LoopConfig):
    """Hyper-parameters of a training run (saved with the checkpoint); `steps` are LM steps,
    after `warmup_steps` identity warm-up steps."""

    lr: float = 3e-4
    warmup_steps: int = 0  # identity warm-up steps: only useful without the residual form (see identity_step)
    batch_size: int = 8  # sequences per micro-batch
    seq_len: int = 128  # tokens of the sampled tokenizer per sequence
    vocab_size: int = 32768  # size of each sampled tokenizer
    negatives: int = 2048  # random extra tokens in the softmax (-1: the whole sampled vocabulary)
    aux_weight: float = 0.5
    noise: float = 1.0  # std of the noise on sampled tokenizers' log-count scores
    sampler_window: int = 256  # recent texts the substring counts come from
    identity_batch: int = 2048  # base tokens per warm-up step
    tokenizers: str = "unigram"  # what the LM phase trains on: unigram, merges or mixed (see the module docstring)
    max_reduction: float = 0.3  # merges: each batch is merged to a reduction drawn from [0.02, this]
    boundary: str = "pretokens"  # merges: where merges may not cross; a comma list draws one per step
    objective: str = "whole"  # merges: whole (mode B), prefill (mode A) or both (see the module docstring)
    output_anchor: float = 10.0  # prefill steps: weight of the pull of output rows back to the run's start
    whole_chars: bool = False  # merges: pieces of UTF-8 characters take part in no merge (BatchMerger's whole_chars)
    tail: int = 0  # prefill steps: the contexts' last `tail` segments stay in the base's tokens (merge_segments)
    mix: str = "chars"  # how training windows are drawn from the corpus (Corpus.window)
    init: str | None = None  # a saved hypernetwork to start from (its architecture too); fresh optimizer and schedule

    def check(self) -> None:
        if self.tokenizers not in TOKENIZERS:
            raise TokenSurgeryError(f"tokenizers must be one of {', '.join(TOKENIZERS)}, got {self.tokenizers!r}")
        if self.objective not in OBJECTIVES:
            raise TokenSurgeryError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.tail < 0:
            raise TokenSurgeryError(f"tail must be >= 0 segments, got {self.tail}")
        if (self.whole_chars or self.tail) and self.tokenizers == "unigram":
            raise TokenSurgeryError("whole_chars and tail shape merged batches: use them with tokenizers 'merges' or 'mixed'")
        if self.tail and self.objective == "whole":
            raise TokenSurgeryError("tail keeps the end of prefill contexts: use it with objective 'prefill' or 'both'")
        if self.output_anchor < 0:
            raise TokenSurgeryError(f"output_anchor must not be negative, got {self.output_anchor}")
        if self.objective != "whole" and self.tokenizers == "unigram":
            raise TokenSurgeryError(f"objective {self.objective!r} trains on merged batches: use it with "
                                    "tokenizers 'merges' or 'mixed'")
        from .dynamic.merger import BOUNDARIES

        if any(b not in BOUNDARIES for b in self.boundary.split(",")):
            raise TokenSurgeryError(f"boundary must be one or more of {', '.join(BOUNDARIES)} (comma-separated), "
                                    f"got {self.boundary!r}")
        if self.mix not in ("chars", "source"):
            raise TokenSurgeryError(f"mix must be 'chars' or 'source', got {self.mix!r}")
        if not 0.02 <= self.max_reduction < 1:
            raise TokenSurgeryError(f"max_reduction must be in [0.02, 1), got {self.max_reduction}")
        for name in ("batch_size", "seq_len", "grad_accum", "vocab_size", "identity_batch", "save_every"):
            if getattr(self, name) < 1:
                raise TokenSurgeryError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0 or self.warmup_steps < 0:
            raise TokenSurgeryError("steps and warmup_steps must not be negative")
        if self.vocab_size < 1000:
            raise TokenSurgeryError(f"vocab_size {self.vocab_size} is too small for a sampled tokenizer (use 1000+)")


# ---- the base LM ---------------------------------------------------------------------------

class FrozenLM:
    """The base model, frozen: hidden states from input embeddings, logits from any rows."""

    def __init__(self, folder: Path, device: str):
        from tokensurgery.evaluate import load_model

        self.model = load_model(folder, device=device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        emb = self.model.get_input_embeddings()
        self.scale = getattr(emb, "embed_scale", None)  # Gemma scales inputs inside the embedding module
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def logits(self, inputs_embeds: torch.Tensor, out_rows: torch.Tensor,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over `out_rows` after every position (or only where the boolean mask
        `positions` is set: then one row per such position, in order)."""
        x = inputs_embeds if self.scale is None else inputs_embeds * self.scale.to(inputs_embeds.dtype)
        h = self.model.base_model(inputs_embeds=x).last_hidden_state  # the decoder without its LM head
        if positions is not None:
            h = h[positions]
        logits = h @ out_rows.T
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# ---- data --------------------------------------------------------------------------------

def _rng(config: TrainConfig, step: int, rank: int, micro: int) -> random.Random:
    return random.Random(f"{config.seed}:{step}:{rank}:{micro}")


# ---- the trainer ---------------------------------------------------------------------------

class Trainer:
    """Holds the base, the hypernetwork, the optimizer and the data of one run."""

    def __init__(self, base: str | Path, corpus: Corpus, out: str | Path, config: TrainConfig,
                 hypernet_options: dict | None = None, resume: bool = False, force: bool = False, progress: bool = True):
        from tokensurgery.checkpoint import check_embeddings_cover, load_embeddings
        from tokensurgery.inputs import open_model, vocabulary_of_folder

        config.check()
        initial = None
        if config.init and not resume:  # a bad --init fails before OUT is touched
            if Path(config.init).resolve() == Path(out).resolve():
                raise TokenSurgeryError("--init and OUT are the same folder; write the new run to another OUT")
            initial = Hypernet.from_pretrained(config.init)
        self.loop = TrainLoop(out, config, resume, force, progress, desc="training hypernetwork",
                              shown=("step", "phase", "loss", "lm", "aux", "identity", "anchor", "tokens_per_byte"))
        self.config, self.corpus, self.out, self.progress = self.loop.config, corpus, Path(out), progress
        self.rank, self.world = self.loop.rank, self.loop.world
        self.base_dir = open_model(base, progress=progress and self.rank == 0)
        self.base_vocab = vocabulary_of_folder(self.base_dir, name=str(base))
        emb = load_embeddings(self.base_dir)
        check_embeddings_cover(emb, len(self.base_vocab), f"base {base}")
        if resume:
            self.hypernet = Hypernet.from_pretrained(self.loop.resume_folder(), emb)
        elif initial is not None:  # attach() refuses a hypernetwork trained for another base
            self.hypernet = initial.attach(emb)
        else:
            torch.manual_seed(self.config.seed)  # the same seed starts from the same weights
            self.hypernet = hypernet_for(emb, name=str(base), **(hypernet_options or {}))
        self.loop.attach(self.hypernet)
        self.anchor = None  # the run's starting hypernetwork, frozen: prefill steps hold output rows to it
        if config.objective != "whole" and config.output_anchor and config.init:
            self.anchor = Hypernet.from_pretrained(config.init).attach(emb).to(self.config.device).eval()
            self.anchor.requires_grad_(False)
        self.lm = FrozenLM(self.base_dir, self.config.device)
        self.splitter = PieceSplitter(self.base_vocab, self.hypernet.config.max_pieces, n_rows=emb.input.shape[0])
        self.identity_ids = [i for i, k in enumerate(self.base_vocab.kinds)
                             if k == TokenKind.NORMAL and self.base_vocab.surface[i] and i < emb.input.shape[0]]
        bos = self.base_vocab.bos_added
        self.bos = None if bos is None else int(bos)
        from .dynamic.merger import BatchMerger

        self.mergers = [BatchMerger(self.base_vocab, boundary=b, n_base=emb.input.shape[0],
                                    whole_chars=self.config.whole_chars)
                        for b in self.config.boundary.split(",")]

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def history(self) -> list[dict]:
        return self.loop.history

    # ---- schedule ---------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.config.warmup_steps + self.config.steps

    # ---- losses -------------------------------------------------------------------------

    def _identity_loss(self, pred_in, pred_out, base_ids: torch.Tensor) -> torch.Tensor:
        h = self.hypernet
        li = (((pred_in - h.base_input[base_ids]) / h.std_input) ** 2).mean()
        lo = (((pred_out - h.base_output[base_ids]) / h.std_output) ** 2).mean()
        return (li + lo) / 2

    def identity_step(self, rng: random.Random) -> dict:
        """Reconstruct BASE's rows from their own pieces. With the residual form (zero-initialised
        heads on top of FVT) an untrained hypernetwork already does this exactly, so the loss and its
        gradient are 0: warm-up only matters for `residual=False`."""
        ids = rng.sample(self.identity_ids, min(self.config.identity_batch, len(self.identity_ids)))
        pieces = [self.splitter(self.base_vocab.surface[i]) for i in ids]
        pred_in, pred_out = self.loop.ddp(pieces)  # DDP under torchrun
        loss = self._identity_loss(pred_in, pred_out, torch.tensor(ids, device=pred_in.device))
        return {"loss": loss, "identity": loss.detach()}

    def batch_texts(self, step: int, micro: int) -> list[str]:
        rng = _rng(self.config, step, self.rank, micro)
        return [self.corpus.window(rng, self.config.seq_len * 8, self.config.mix) for _ in range(self.config.batch_size)]

    def lm_step(self, step: int, micro: int, sampler: UnigramSampler) -> dict:
        c = self.config
        texts = self.batch_texts(step, micro)
        for t in texts:
            sampler.add(t)
        sampler.rng = _rng(c, step, self.rank, micro)
        tok = sampler.sample()
        seqs = [tok.encode(t)[: c.seq_len] for t in texts]
        seqs = [s for s in seqs if len(s) >= 2]
        width = min(map(len, seqs))
        n_bytes = sum(len(tok.surfaces[i]) for s in seqs for i in s[1:width])
        used = sorted({i for s in seqs for i in s})
        active = used
        n_real = len(tok) - 1  # the last id is <unk>, never emitted
        if c.negatives < 0 or c.negatives >= n_real - len(used):
            active = list(range(n_real))
        elif c.negatives > 0:
            g = torch.Generator().manual_seed(_rng(c, step, self.rank, micro).randrange(2**62))
            extra = torch.randperm(n_real, generator=g)[: c.negatives + len(used)].tolist()
            seen = set(used)
            active = used + [i for i in extra if i not in seen][: c.negatives]
        local = {t: j for j, t in enumerate(active)}
        pieces = [self.splitter(tok.surfaces[t]) for t in active]
        pred_in, pred_out = self.loop.ddp(pieces)  # DDP under torchrun
        x = torch.tensor([[local[i] for i in s[:width]] for s in seqs], device=pred_in.device)
        inputs = pred_in[x]
        if self.bos is not None:
            bos_row = self.hypernet.base_input[self.bos].expand(len(seqs), 1, -1)
            inputs = torch.cat([bos_row, inputs], 1)
        logits = self.lm.logits(inputs[:, :-1], pred_out)
        targets = x if self.bos is not None else x[:, 1:]
        lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        loss = lm_loss
        out = {"lm": lm_loss.detach(), "tokens_per_byte": len(seqs) * (width - 1) / max(1, n_bytes),
               "active": len(active)}
        shared = [(j, self.base_vocab.by_bytes.get(tok.surfaces[t])) for j, t in enumerate(active)]
        shared = [(j, s) for j, s in shared if s is not None and s < self.hypernet.config.base_vocab_size]
        if c.aux_weight and shared:
            rows = torch.tensor([j for j, _ in shared], device=pred_in.device)
            aux = self._identity_loss(pred_in[rows], pred_out[rows], torch.tensor([s for _, s in shared], device=pred_in.device))
            loss = loss + c.aux_weight * aux
            out["aux"] = aux.detach()
        out["loss"] = loss
        return out

    def _merger(self, rng: random.Random):
        """The step's merger (its boundary). One boundary draws nothing, so runs with the default
        repeat the data they drew before."""
        return self.mergers[rng.randrange(len(self.mergers))] if len(self.mergers) > 1 else self.mergers[0]

    def _merged_inputs(self, x: torch.Tensor, n: int, used: list[int], n_new: int, pred_in: torch.Tensor):
        """Input embeddings of ids `x` (BASE ids below `n`, the batch's new tokens from `n` on):
        BASE's rows, or the predicted rows `pred_in` of the new ids `used` (in that order); and
        `local`, each id's row in `pred_in` (-1 for the others)."""
        h = self.hypernet
        local = torch.full((n + n_new,), -1, dtype=torch.long, device=x.device)
        local[torch.tensor(used, device=x.device)] = torch.arange(len(used), device=x.device)
        inputs = torch.where((x >= n).unsqueeze(-1), pred_in[local[x].clamp(min=0)], h.base_input[x.clamp(max=n - 1)])
        return inputs, local

    def merge_step(self, step: int, micro: int) -> dict:
        """One LM step on a batch merged over itself (see the module docstring)."""
        c, h = self.config, self.hypernet
        rng = _rng(c, step, self.rank, micro)
        texts = self.batch_texts(step, micro)
        merger = self._merger(rng)
        batch = merger(texts, reduction=rng.uniform(0.02, c.max_reduction))
        seqs = [ids[: c.seq_len] for ids in batch.ids]
        seqs = [s for s in seqs if len(s) >= 2]
        width = min(map(len, seqs))
        x = torch.tensor([s[:width] for s in seqs], device=h.base_input.device)
        used = sorted({i for s in seqs for i in s[:width] if i >= merger.n_base})
        if not used:  # nothing was merged in the part that is trained on
            return self.identity_step(rng)
        n = merger.n_base
        pieces = [list(batch.new_tokens[i - n].parts[: h.config.max_pieces]) for i in used]
        pred_in, pred_out = self.loop.ddp(pieces)  # DDP under torchrun
        inputs, local = self._merged_inputs(x, n, used, len(batch.new_tokens), pred_in)
        if self.bos is not None:
            inputs = torch.cat([h.base_input[self.bos].expand(len(seqs), 1, -1), inputs], 1)
        logits = self.lm.logits(inputs[:, :-1], torch.cat([h.base_output, pred_out]))
        targets = torch.where(x >= n, n + local[x], x)  # new tokens' output rows follow the base's
        targets = targets if self.bos is not None else targets[:, 1:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        n_bytes = sum(len(merger.vocab.surface[i]) if i < n else len(batch.new_tokens[i - n].surface)
                      for s in seqs for i in s[1:width])
        return {"loss": loss, "lm": loss.detach(), "tokens_per_byte": len(seqs) * (width - 1) / max(1, n_bytes),
                "active": len(used)}

    def prefill_step(self, step: int, micro: int, at: float | None = None, reduction: float | None = None) -> dict:
        """One step of the prefill objective (mode A of `dynamic score`, see the module docstring):
        the loss is the mean cross-entropy of the continuation tokens. `at` and `reduction`
        (drawn from the step's seed when None) fix the cut and the contexts' merge budget."""
        from .dynamic.score import context_cut, start_token

        c, h = self.config, self.hypernet
        rng = _rng(c, step, self.rank, micro)
        merger = self._merger(rng)
        n, vocab = merger.n_base, merger.vocab
        contexts, rests = [], []
        for text in self.batch_texts(step, micro):
            segs, kept = [], 0
            for seg in merger.segments(text):  # whole segments, up to seq_len base tokens
                if kept + len(seg) > c.seq_len:
                    break
                segs.append(seg)
                kept += len(seg)
            if len(segs) < 2:
                continue
            k = context_cut(segs, vocab, rng.uniform(0.3, 0.7) if at is None else at)
            contexts.append(segs[:k])
            rests.append([t for seg in segs[k:] for t in seg])
        reduction = rng.uniform(0.02, c.max_reduction) if reduction is None else reduction
        if not contexts:
            return self.identity_step(rng)
        ctx = merger.merge_segments(contexts, reduction=reduction, tail=c.tail)
        used = sorted({i for ids in ctx.ids for i in ids if i >= n})
        if not used:  # nothing was merged
            return self.identity_step(rng)
        pieces = [list(ctx.new_tokens[i - n].parts[: h.config.max_pieces]) for i in used]
        pred_in, pred_out = self.loop.ddp(pieces)  # DDP under torchrun
        rows = [[start_token(vocab)] + ids + rest for ids, rest in zip(ctx.ids, rests)]
        width = max(map(len, rows))
        x = torch.zeros(len(rows), width, dtype=torch.long)  # right padding: causal, so it changes nothing
        targets = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (row, ids, rest) in enumerate(zip(rows, ctx.ids, rests)):
            x[r, : len(row)] = torch.tensor(row)
            targets[r, len(ids) : len(ids) + len(rest)] = torch.tensor(rest)  # position p predicts token p + 1
        x, targets = x.to(pred_in.device), targets.to(pred_in.device)
        inputs, _ = self._merged_inputs(x, n, used, len(ctx.new_tokens), pred_in)
        scored = targets >= 0
        logits = self.lm.logits(inputs, h.base_output, positions=scored)
        loss = F.cross_entropy(logits.float(), targets[scored])
        n_bytes = sum(len(vocab.decode_bytes(rest)) for rest in rests)
        out = {"lm": loss.detach(), "tokens_per_byte": int(scored.sum()) / max(1, n_bytes), "active": len(used)}
        if c.output_anchor and h.head_output is not None:  # a tied hypernetwork's output rows are its input rows
            with torch.no_grad():
                if self.anchor is not None:
                    start = self.anchor(pieces)[1]
                else:  # FVT: what an untrained residual hypernetwork gives
                    start = torch.stack([h.base_output[torch.tensor(p, device=x.device)].mean(0) for p in pieces])
            anchor = (((pred_out - start) / h.std_output) ** 2).mean()
            loss = loss + c.output_anchor * anchor
            out["anchor"] = anchor.detach()
        return {"loss": loss, **out}

    # ---- the loop -----------------------------------------------------------------------

    def _sampler(self) -> UnigramSampler:
        """A sampler whose window holds the texts of the steps just before `self.step`."""
        c = self.config
        sampler = UnigramSampler(c.vocab_size, c.sampler_window, noise=c.noise, seed=c.seed)
        rng = random.Random(f"{c.seed}:prime:{self.rank}")  # the first LM step needs counts: the run's first texts
        for _ in range(c.sampler_window // 2):
            sampler.add(self.corpus.window(rng, c.seq_len * 8, c.mix))
        need = math.ceil(c.sampler_window / (c.batch_size * c.grad_accum))
        for step in range(max(c.warmup_steps, self.step - need), self.step):
            for micro in range(c.grad_accum):
                for t in self.batch_texts(step, micro):
                    sampler.add(t)
        return sampler

    def run(self, until: int | None = None) -> TrainResult:
        """Train to the end of the schedule (or only up to step `until`, checkpointed)."""
        c = self.config
        state = {"sampler": None}

        def on_phase(step: int) -> None:
            if step >= c.warmup_steps and state["sampler"] is None and c.tokenizers != "merges":
                state["sampler"] = self._sampler()

        def loss_fn(step: int, micro: int) -> dict:
            if step < c.warmup_steps:
                return {**self.identity_step(_rng(c, step, self.rank, micro)), "phase": "identity"}
            kind = c.tokenizers
            if kind == "mixed":
                kind = random.Random(f"{c.seed}:kind:{step}:{self.rank}:{micro}").choice(("unigram", "merges"))
            if kind == "merges":
                objective = c.objective
                if objective == "both":
                    objective = random.Random(f"{c.seed}:objective:{step}:{self.rank}:{micro}").choice(("whole", "prefill"))
                if objective == "prefill":
                    return {**self.prefill_step(step, micro), "phase": "prefill"}
                return {**self.merge_step(step, micro), "phase": "merges"}
            return {**self.lm_step(step, micro, state["sampler"]), "phase": "lm"}

        start = time.perf_counter()
        result = self.loop.run(loss_fn, total_steps=self.total_steps, until=until, on_phase=on_phase)
        self.loop.save_final({"base": str(self.base_dir), **self.corpus.record()},
                             time.perf_counter() - start)
        self.loop.finish()
        return result


def train(base: str | Path, corpus: Corpus, out: str | Path, config: TrainConfig | None = None,
          hypernet_options: dict | None = None, resume: bool = False, force: bool = False,
          progress: bool = True) -> TrainResult:
    """Train (or resume) a hypernetwork for BASE on `corpus`; the result is saved in OUT."""
    trainer = Trainer(base, corpus, out, config or TrainConfig(), hypernet_options, resume, force, progress)
    return trainer.run()
