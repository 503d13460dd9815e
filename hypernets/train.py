"""Training a hypernetwork for a frozen base LM (ZeTT recipe, sized for small machines).

1. Identity warm-up: predict the base's own rows of single base tokens (MSE in units of
   the base embeddings' per-dimension std).
2. LM phase: every step samples a unigram tokenizer from the recent batches' substrings
   (`sampler.py`), encodes the batch with it, predicts embeddings for the tokens in the
   batch plus `negatives` random tokens of the sampled vocabulary (-1: all of it; the
   softmax runs over this active set), and trains on next-token cross-entropy through the
   frozen base, plus `aux_weight` x the identity loss on active tokens that are exactly one
   base token.

Every step's data is a function of (seed, step, rank), so a resumed run continues exactly.
Under `torchrun` (WORLD_SIZE > 1) the hypernetwork is wrapped in DistributedDataParallel
(gloo on CPU, nccl on GPU); each rank draws its own data and tokenizer; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.training import (CHECKPOINT, STATE, TrainResult, check_in_sync, check_out, cosine_lr, dist_setup,
                                   from_known, load_state, out_of_time, save_checkpoint, saved_config)
from tokensurgery.vocabulary import TokenKind

from tokensurgery.corpus import Corpus
from .model import Hypernet, hypernet_for
from .pieces import PieceSplitter
from .sampler import UnigramSampler

LOG = "training_log.jsonl"


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved with the checkpoint)."""

    steps: int = 1000  # LM steps (after the warm-up)
    warmup_steps: int = 100  # identity warm-up steps
    batch_size: int = 8  # sequences per micro-batch
    seq_len: int = 128  # tokens of the sampled tokenizer per sequence
    grad_accum: int = 1
    lr: float = 3e-4
    lr_warmup: int = 50  # linear learning-rate warm-up (steps); then cosine to 10%
    weight_decay: float = 0.01
    clip: float = 1.0
    vocab_size: int = 32768  # size of each sampled tokenizer
    negatives: int = 2048  # random extra tokens in the softmax (-1: the whole sampled vocabulary)
    aux_weight: float = 0.5
    noise: float = 1.0  # std of the noise on sampled tokenizers' log-count scores
    sampler_window: int = 256  # recent texts the substring counts come from
    identity_batch: int = 2048  # base tokens per warm-up step
    save_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None  # stop (checkpointed, resumable) after this much wall-clock time
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        for name in ("batch_size", "seq_len", "grad_accum", "vocab_size", "identity_batch", "save_every"):
            if getattr(self, name) < 1:
                raise TokenSurgeryError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0 or self.warmup_steps < 0:
            raise TokenSurgeryError("steps and warmup_steps must not be negative")
        if self.vocab_size < 1000:
            raise TokenSurgeryError(f"vocab_size {self.vocab_size} is too small for a sampled tokenizer (use 1000+)")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_known(cls, d)


# ---- the base LM ---------------------------------------------------------------------------

class FrozenLM:
    """The base model, frozen: hidden states from input embeddings, logits from any rows."""

    def __init__(self, folder: Path, device: str):
        from tokensurgery.evaluate import load_causal_lm

        self.model, _ = load_causal_lm(folder, device=device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        emb = self.model.get_input_embeddings()
        self.scale = getattr(emb, "embed_scale", None)  # Gemma scales inputs inside the embedding module
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    def logits(self, inputs_embeds: torch.Tensor, out_rows: torch.Tensor) -> torch.Tensor:
        x = inputs_embeds if self.scale is None else inputs_embeds * self.scale.to(inputs_embeds.dtype)
        h = self.model.base_model(inputs_embeds=x).last_hidden_state  # the decoder without its LM head
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
        from tokensurgery.inputs import open_model, vocabulary_of_folder
        from tokensurgery.checkpoint import check_embeddings_cover, load_embeddings

        config.check()
        self.config, self.corpus, self.out, self.progress = config, corpus, Path(out), progress
        self.rank, self.world = dist_setup(config.device)
        if self.rank == 0:
            check_out(self.out, resume, force)
        self.base_dir = open_model(base, progress=progress and self.rank == 0)
        self.base_vocab = vocabulary_of_folder(self.base_dir, name=str(base))
        emb = load_embeddings(self.base_dir)
        check_embeddings_cover(emb, len(self.base_vocab), f"base {base}")
        start = self.out / CHECKPOINT
        if resume:  # the saved run's settings, except how long to go on
            saved = TrainConfig.from_dict(saved_config(self.out))
            saved.steps, saved.max_minutes, saved.device = config.steps, config.max_minutes, config.device
            self.config = config = saved
        if resume and (start / STATE).exists():
            self.hypernet = Hypernet.from_pretrained(start, emb)
        else:
            torch.manual_seed(config.seed)  # the same seed starts from the same weights
            self.hypernet = hypernet_for(emb, name=str(base), **(hypernet_options or {}))
        self.hypernet.to(config.device)
        self.lm = FrozenLM(self.base_dir, config.device)
        self.splitter = PieceSplitter(self.base_vocab, self.hypernet.config.max_pieces, n_rows=emb.input.shape[0])
        self.identity_ids = [i for i, k in enumerate(self.base_vocab.kinds)
                             if k == TokenKind.NORMAL and self.base_vocab.surface[i] and i < emb.input.shape[0]]
        bos = self.base_vocab.bos_added
        self.bos = None if bos is None else int(bos)
        self.model = self.hypernet
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.hypernet, find_unused_parameters=True)
        params = [p for p in self.hypernet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        if resume and (start / STATE).exists():
            state = load_state(self.out)
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
        self.history: list[dict] = []

    # ---- schedule ---------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.config.warmup_steps + self.config.steps

    def lr_at(self, step: int) -> float:
        return cosine_lr(step, self.total_steps, self.config.lr, self.config.lr_warmup)

    # ---- losses -------------------------------------------------------------------------

    def _identity_loss(self, pred_in, pred_out, base_ids: torch.Tensor) -> torch.Tensor:
        h = self.hypernet
        li = (((pred_in - h.base_input[base_ids]) / h.std_input) ** 2).mean()
        lo = (((pred_out - h.base_output[base_ids]) / h.std_output) ** 2).mean()
        return (li + lo) / 2

    def identity_step(self, rng: random.Random) -> dict:
        ids = rng.sample(self.identity_ids, min(self.config.identity_batch, len(self.identity_ids)))
        pieces = [self.splitter(self.base_vocab.surface[i]) for i in ids]
        pred_in, pred_out = self.model(pieces)
        loss = self._identity_loss(pred_in, pred_out, torch.tensor(ids, device=pred_in.device))
        return {"loss": loss, "identity": loss.detach()}

    def batch_texts(self, step: int, micro: int) -> list[str]:
        rng = _rng(self.config, step, self.rank, micro)
        return [self.corpus.window(rng, self.config.seq_len * 8) for _ in range(self.config.batch_size)]

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
        pred_in, pred_out = self.model(pieces)
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

    # ---- the loop -----------------------------------------------------------------------

    def _sampler(self) -> UnigramSampler:
        """A sampler whose window holds the texts of the steps just before `self.step`."""
        c = self.config
        sampler = UnigramSampler(c.vocab_size, c.sampler_window, noise=c.noise, seed=c.seed)
        rng = random.Random(f"{c.seed}:prime:{self.rank}")  # the first LM step needs counts: the run's first texts
        for _ in range(c.sampler_window // 2):
            sampler.add(self.corpus.window(rng, c.seq_len * 8))
        need = math.ceil(c.sampler_window / (c.batch_size * c.grad_accum))
        for step in range(max(c.warmup_steps, self.step - need), self.step):
            for micro in range(c.grad_accum):
                for t in self.batch_texts(step, micro):
                    sampler.add(t)
        return sampler

    def run(self, until: int | None = None) -> TrainResult:
        """Train to the end of the schedule (or only up to step `until`, checkpointed)."""
        from tokensurgery.progress import bar

        c = self.config
        start = time.perf_counter()
        sampler = None
        end = self.total_steps if until is None else min(until, self.total_steps)
        steps = range(self.step, end)
        stopped = False
        self.model.train()
        for step in bar(steps, "training hypernetwork", total=len(steps), enabled=self.progress and self.rank == 0,
                        unit="step"):
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(step)
            phase = "identity" if step < c.warmup_steps else "lm"
            if phase == "lm" and sampler is None:
                sampler = self._sampler()
            logs: dict[str, float] = {}
            for micro in range(c.grad_accum):
                sync = micro == c.grad_accum - 1 or self.world == 1
                ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    parts = self.identity_step(_rng(c, step, self.rank, micro)) if phase == "identity" \
                        else self.lm_step(step, micro, sampler)
                    (parts["loss"] / c.grad_accum).backward()
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / c.grad_accum
            norm = torch.nn.utils.clip_grad_norm_(self.hypernet.parameters(), c.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step + 1
            logs.update(step=self.step, phase=phase, lr=self.lr_at(step), grad_norm=float(norm),
                        seconds=round(time.perf_counter() - start, 2))
            self.history.append(logs)
            if self.rank == 0:
                self._log(logs)
            late = out_of_time(start, c.max_minutes, self.world)
            if self.step % c.save_every == 0 or late or self.step == end:
                self.save_checkpoint()
            if late and self.step < end:
                stopped = True
                break
        if self.world > 1:
            check_in_sync(self.hypernet, self.world)
        if self.rank == 0:
            self.save_final(time.perf_counter() - start)
        return TrainResult(self.out, self.step, time.perf_counter() - start, self.history, stopped)

    def _log(self, logs: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(logs) + "\n")
        if self.progress and (logs["step"] % self.config.log_every == 0 or logs["step"] == 1):
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()
                             if k in ("step", "phase", "loss", "lm", "aux", "identity", "tokens_per_byte"))
            print(shown, file=sys.stderr, flush=True)

    # ---- saving -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Hypernetwork + optimizer state into OUT/checkpoint, atomically (rank 0 only)."""
        if self.rank == 0:
            save_checkpoint(self.out, self.hypernet.save_pretrained, self.optimizer, self.step, asdict(self.config))

    def save_final(self, seconds: float) -> None:
        self.hypernet.save_pretrained(self.out)
        summary = {"base": str(self.base_dir), "steps_done": self.step, "seconds_this_run": round(seconds, 1),
                   "world_size": self.world, "config": asdict(self.config), "corpus_chars": self.corpus.n_chars}
        (self.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def train(base: str | Path, corpus: Corpus, out: str | Path, config: TrainConfig | None = None,
          hypernet_options: dict | None = None, resume: bool = False, force: bool = False,
          progress: bool = True) -> TrainResult:
    """Train (or resume) a hypernetwork for BASE on `corpus`; the result is saved in OUT."""
    trainer = Trainer(base, corpus, out, config or TrainConfig(), hypernet_options, resume, force, progress)
    return trainer.run()
