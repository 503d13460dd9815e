"""Pieces every trainer shares: torchrun/DDP set-up, the learning-rate schedule, atomic
checkpoints with optimizer state, the output-folder rules and a check that ranks agree."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from .errors import TokenSurgeryError

CHECKPOINT = "checkpoint"
STATE = "trainer_state.pt"


@dataclass
class TrainResult:
    """What a training run did: where it saved, how far it got, its log."""

    out: Path
    steps_done: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def from_known(cls, d: dict):
    """A dataclass from a saved dict, ignoring keys it does not know (older/newer files)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def out_of_time(start: float, max_minutes: float | None, world: int) -> bool:
    """Whether the time budget is spent; under DDP every rank gets the same answer."""
    late = max_minutes is not None and time.perf_counter() - start > 60 * max_minutes
    if world > 1:
        flag = torch.tensor([float(late)])
        torch.distributed.all_reduce(flag)
        late = bool(flag.item())
    return late


def dist_setup(device: str) -> tuple[int, int]:
    """(rank, world size); under torchrun (WORLD_SIZE > 1) joins the process group (gloo on
    CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def check_out(out: Path, resume: bool, force: bool) -> None:
    """OUT must be new (or empty), or hold a checkpoint when resuming; --force replaces it."""
    if out.exists() and any(out.iterdir()):
        if resume:
            if not (out / CHECKPOINT / STATE).exists():
                raise TokenSurgeryError(f"{out} has no checkpoint to resume from")
        elif force:
            shutil.rmtree(out)
        else:
            raise TokenSurgeryError(f"{out} already exists; use --resume to continue it or --force to replace it")
    elif resume:
        raise TokenSurgeryError(f"{out} has no checkpoint to resume from")


def save_checkpoint(out: Path, save_model: Callable[[Path], object], optimizer, step: int, config: dict) -> None:
    """Model (via `save_model(folder)`), optimizer state, step and run config into
    OUT/checkpoint, replacing the previous one only once the new one is complete."""
    tmp, final, old = out / (CHECKPOINT + ".tmp"), out / CHECKPOINT, out / (CHECKPOINT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / STATE)
    (tmp / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_state(out: Path) -> dict:
    """The optimizer state and step of OUT's checkpoint (tensors only: weights_only)."""
    return torch.load(out / CHECKPOINT / STATE, weights_only=True)


def saved_config(out: Path) -> dict:
    return json.loads((out / CHECKPOINT / "train_config.json").read_text())


def check_in_sync(module: torch.nn.Module, world: int) -> None:
    """All ranks must hold the same weights (DDP averages gradients; this checks it did)."""
    import torch.distributed as dist

    total = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(total) for _ in range(world)]
    dist.all_gather(gathered, total)
    if any(abs(float(g) - float(total)) > 1e-6 * max(1.0, abs(float(total))) for g in gathered):
        raise TokenSurgeryError(f"ranks diverged: parameter sums {[float(g) for g in gathered]}")
