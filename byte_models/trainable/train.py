"""Training byte-level models (hierarchical or flat) on raw text, under torchrun unchanged.

Every step draws `batch_size` windows of `context_bytes` characters from the corpus (a
function of seed, step and rank, so `resume` continues exactly) and minimises the model's
`text_loss` (next-byte cross-entropy; for a retrofitted hierarchical model plus the
distillation term). Checkpoints, schedule and DDP come from `tokensurgery.training`.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.corpus import Corpus
from tokensurgery.progress import bar
from tokensurgery.training import (CHECKPOINT, TrainResult, check_in_sync, check_out, cosine_lr, dist_setup, from_known,
                                   load_state, out_of_time, save_checkpoint, saved_config)

from .flat import FlatByteLM
from .hierarchical import CONFIG as HIERARCHICAL_CONFIG
from .hierarchical import HierarchicalLM

LOG = "training_log.jsonl"


@dataclass
class ByteTrainConfig:
    steps: int = 1000
    batch_size: int = 8
    context_bytes: int = 512  # characters per training window
    lr: float = 1e-3
    lr_warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0
    distill_weight: float = 1.0  # retrofitted hierarchical models only
    stage: str = "all"  # hierarchical only: "all", or for retrofits "distill" / "decoder" (see HierarchicalLM.text_loss)
    bf16_context: bool = False  # stage "decoder": frozen encoder + backbone under bfloat16 autocast
    save_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None
    lr_by_time: bool = False  # with max_minutes: the cosine schedule spans the time budget, not `steps`
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTrainConfig":
        return from_known(cls, d)


def load_byte_model(folder: str | Path) -> nn.Module:
    """A saved hierarchical or flat byte model."""
    folder = Path(folder)
    if (folder / HIERARCHICAL_CONFIG).exists():
        return HierarchicalLM.from_pretrained(folder)
    if (folder / "config.json").exists():
        return FlatByteLM.from_pretrained(folder)
    raise TokenSurgeryError(f"{folder} holds no saved byte model")


class _Loss(nn.Module):
    """Routes `text_loss` through forward, so DistributedDataParallel sees one forward per step."""

    def __init__(self, model: nn.Module, config: ByteTrainConfig):
        super().__init__()
        self.model, self.config = model, config

    def forward(self, texts: list[bytes]):
        if isinstance(self.model, HierarchicalLM):
            return self.model.text_loss(texts, self.config.distill_weight, self.config.stage, self.config.bf16_context)
        return self.model.text_loss(texts)


def _lr(config: ByteTrainConfig, step: int, start: float, world: int) -> float:
    """The step's learning rate: cosine over `steps`, or over the time budget with `lr_by_time`
    (for equal-wall-clock comparisons; rank 0's clock decides under DDP)."""
    if not (config.lr_by_time and config.max_minutes) or step < config.lr_warmup:
        return cosine_lr(step, config.steps, config.lr, config.lr_warmup)
    frac = torch.tensor([(time.perf_counter() - start) / (60 * config.max_minutes)])
    if world > 1:
        torch.distributed.broadcast(frac, 0)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, float(frac)))))


def _texts(corpus: Corpus, config: ByteTrainConfig, step: int, rank: int) -> list[bytes]:
    rng = random.Random(f"{config.seed}:{step}:{rank}")
    return [corpus.window(rng, config.context_bytes).encode() for _ in range(config.batch_size)]


def train_bytes(model: nn.Module, corpus: Corpus, out: str | Path, config: ByteTrainConfig | None = None,
                resume: bool = False, force: bool = False, progress: bool = True,
                until: int | None = None) -> TrainResult:
    """Train `model` (ignored when resuming: OUT's checkpoint is loaded) and save it to OUT."""
    config = config or ByteTrainConfig()
    out = Path(out)
    rank, world = dist_setup(config.device)
    if rank == 0:
        check_out(out, resume, force)
    step0 = 0
    if resume:
        saved = ByteTrainConfig.from_dict(saved_config(out))
        saved.steps, saved.max_minutes, saved.device = config.steps, config.max_minutes, config.device
        config = saved
        model = load_byte_model(out / CHECKPOINT)
    model.to(config.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    if resume:
        state = load_state(out)
        optimizer.load_state_dict(state["optimizer"])
        step0 = int(state["step"])
    if config.stage != "all" and not isinstance(model, HierarchicalLM):
        raise TokenSurgeryError(f"stage {config.stage!r} is for hierarchical models only")
    wrapped = _Loss(model, config)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, find_unused_parameters=True)
    end = config.steps if until is None else min(until, config.steps)
    history, start, stopped = [], time.perf_counter(), False
    model.train()
    for step in bar(range(step0, end), "training byte model", total=end - step0, enabled=progress and rank == 0,
                    unit="step"):
        lr = _lr(config, step, start, world)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, n_bytes = wrapped(_texts(corpus, config, step, rank))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs = {"step": step + 1, "loss": float(loss.detach()), "bytes": n_bytes, "lr": lr, "grad_norm": float(norm),
                "seconds": round(time.perf_counter() - start, 2)}
        history.append(logs)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / LOG, "a") as f:
                f.write(json.dumps(logs) + "\n")
            if progress and (logs["step"] % config.log_every == 0 or logs["step"] == 1):
                print(f"step={logs['step']} loss={logs['loss']:.4f}", file=sys.stderr, flush=True)
        late = out_of_time(start, config.max_minutes, world)
        if rank == 0 and ((step + 1) % config.save_every == 0 or late or step + 1 == end):
            save_checkpoint(out, model.save_pretrained, optimizer, step + 1, asdict(config))
        if late and step + 1 < end:
            stopped = True
            break
    done = history[-1]["step"] if history else step0
    if world > 1:
        check_in_sync(model, world)
    if rank == 0:
        model.save_pretrained(out)
        summary = {"steps_done": done, "seconds_this_run": round(time.perf_counter() - start, 1), "world_size": world,
                   "model": type(model).__name__, "config": asdict(config)}
        (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(out, done, time.perf_counter() - start, history, stopped)
