"""The training loop every trainer shares (hypernetwork, byte models, and those to come).

`TrainLoop` owns what is the same in every run: the output-folder rules and exact `--resume`
(config, weights, optimizer state and step from OUT/checkpoint), the learning-rate schedule
(linear warm-up then cosine to 10%, over the steps or over the time budget), gradient
accumulation, clipping, the optimizer step, the JSONL log and progress bar (log lines through
`tqdm.write`), atomic checkpoints, the time limit, and DDP under torchrun. A trainer gives it
a loss function per (step, micro-batch) and says how to save its model.

Distributed training is plain `torch.distributed` (gloo on CPU, nccl on GPU), launched by
torchrun. We do not use accelerate's `Accelerator` here: exact resume needs our own per-step
random streams and optimizer-state files, the rank-agreement check needs an all-gather, and
what remains (process group, DDP wrapper, no_sync for accumulation) is a few lines; accelerate
stays a dependency only because transformers needs it to load GGUF files.
Not handled: mixed-precision scaling (losses run in the model's dtype), FSDP/sharded optimizers.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from .errors import TokenSurgeryError

CHECKPOINT = "checkpoint"
STATE = "trainer_state.pt"
LOG = "training_log.jsonl"
PG_LEFT = ("the process group is still referenced after training (something holds DDP?); "
           "its worker threads (gloo) may abort this process at exit")


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
        # Imported before the group exists on purpose: torch.distributed.nn's functions take
        # `group=group.WORLD` as a default argument, evaluated at import. DDP imports that module;
        # imported after init_process_group, those defaults would hold the group for good, and
        # destroy_process_group could never free it (see `_dist_teardown`). Before init they are None.
        import torch.distributed.nn  # noqa: F401

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        atexit.register(_dist_teardown)
    return dist.get_rank(), world


def _dist_teardown(barrier: bool = False) -> bool:
    """Leave the process group (after a barrier when asked) and free it while the interpreter is
    still whole; True when the group is gone. Why: gloo's worker threads drop finished work (and
    the Python tensors it holds) after the caller's wait returns; if that happens once the
    interpreter is finalizing, the thread cannot take the GIL and the rank dies with SIGABRT
    ("terminate called without an active exception"; core dumps show ~AsyncBarrierWork ->
    ~AsyncAllgatherWork -> decref_pyobject in ProcessGroupGloo::runLoop, main thread in
    Py_FinalizeEx). Freeing the group joins those threads here, GIL released. It is only freed if
    nothing else holds it: not DDP (the caller unwraps it first) and not torch.distributed.nn's
    default arguments (`dist_setup` imports that module before the group exists).
    `TrainLoop.finish` calls it at the end of training; registered at exit too, for runs that
    end another way (no barrier there: another rank may be gone)."""
    import gc
    import weakref

    import torch.distributed as dist

    if not dist.is_initialized():
        return True
    if barrier:
        dist.barrier()
    group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    gc.collect()  # an unwrapped DDP is in a reference cycle: refcounting alone never frees it
    return group() is None


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


# ---- the loop ----------------------------------------------------------------------------------

@dataclass
class LoopConfig:
    """What every training run has (trainers' configs subclass it and add their own fields)."""

    steps: int = 1000
    lr: float = 1e-3
    lr_warmup: int = 50  # linear learning-rate warm-up (steps); then cosine to 10%
    weight_decay: float = 0.01
    clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step
    save_every: int = 100
    log_every: int = 10
    max_minutes: float | None = None  # stop (checkpointed, resumable) after this much wall-clock time
    lr_by_time: bool = False  # with max_minutes: the cosine schedule spans the time budget, not the steps
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict):
        return from_known(cls, d)


class TrainLoop:
    """One run's loop (see the module docstring). Create it, build the model (from
    `resume_folder()` when `resuming`), call `attach(model, save_model)`, then `run(loss_fn)`.

    `loss_fn(step, micro)` returns a dict with "loss" (a tensor to backpropagate) and any
    numbers to log; `total_steps` is the length of the schedule (default: `config.steps`)."""

    def __init__(self, out: str | Path, config: LoopConfig, resume: bool = False, force: bool = False,
                 progress: bool = True, desc: str = "training", shown: tuple[str, ...] = ("step", "loss")):
        self.out, self.progress, self.desc, self.shown = Path(out), progress, desc, shown
        self.rank, self.world = dist_setup(config.device)
        if self.rank == 0:
            check_out(self.out, resume, force)
        self.resuming = resume
        if resume:  # the saved run's settings, except how long to go on and where
            saved = type(config).from_dict(saved_config(self.out))
            saved.steps, saved.max_minutes, saved.device = config.steps, config.max_minutes, config.device
            config = saved
        self.config = config
        self.step = 0
        self.history: list[dict] = []

    def resume_folder(self) -> Path:
        """Where the model to continue from was saved."""
        return self.out / CHECKPOINT

    def attach(self, model: torch.nn.Module, save_model: Callable[[Path], object] | None = None,
               forward: torch.nn.Module | None = None) -> None:
        """The model whose trainable parameters are optimized and saved; `forward` is the module
        the loss calls (default: the model), wrapped in DDP under torchrun."""
        c = self.config
        self.model, self.save_model = model, save_model or model.save_pretrained
        model.to(c.device)
        self.ddp = forward or model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.ddp, find_unused_parameters=True)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        if self.resuming:
            state = load_state(self.out)
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])

    def lr_at(self, step: int, total: int, start: float) -> float:
        """Cosine over `total` steps, or over the time budget with `lr_by_time` (for
        equal-wall-clock comparisons; rank 0's clock decides under DDP)."""
        c = self.config
        if not (c.lr_by_time and c.max_minutes) or step < c.lr_warmup:
            return cosine_lr(step, total, c.lr, c.lr_warmup)
        frac = torch.tensor([(time.perf_counter() - start) / (60 * c.max_minutes)])
        if self.world > 1:
            torch.distributed.broadcast(frac, 0)
        return c.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, float(frac)))))

    def run(self, loss_fn: Callable[[int, int], dict], total_steps: int | None = None,
            until: int | None = None, on_phase: Callable[[int], object] | None = None) -> TrainResult:
        """Train from the current step to the end of the schedule (or to `until`); returns the
        result after the last checkpoint. `on_phase(step)` runs before each step."""
        from .progress import bar, log

        c = self.config
        total = c.steps if total_steps is None else total_steps
        end = total if until is None else min(until, total)
        start, stopped = time.perf_counter(), False
        self.model.train()
        steps = range(self.step, end)
        by_time = c.lr_by_time and c.max_minutes  # the clock ends the run, not a step count
        for step in bar(steps, self.desc, total=None if by_time else len(steps), enabled=self.progress and self.rank == 0,
                        unit="step"):
            if on_phase is not None:
                on_phase(step)
            lr = self.lr_at(step, total, start)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            logs: dict = {}
            for micro in range(c.grad_accum):
                last = micro == c.grad_accum - 1
                ctx = self.ddp.no_sync() if self.world > 1 and not last else contextlib.nullcontext()
                with ctx:
                    parts = loss_fn(step, micro)
                    (parts["loss"] / c.grad_accum).backward()
                for k, v in parts.items():
                    v = float(v.detach()) if torch.is_tensor(v) else v
                    logs[k] = logs.get(k, 0.0) + v / c.grad_accum if isinstance(v, (int, float)) else v
            norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], c.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step = step + 1
            logs.update(step=self.step, lr=lr, grad_norm=float(norm), seconds=round(time.perf_counter() - start, 2))
            self.history.append(logs)
            if self.rank == 0:
                self.out.mkdir(parents=True, exist_ok=True)
                with open(self.out / LOG, "a") as f:
                    f.write(json.dumps(logs) + "\n")
                if self.progress and (self.step % c.log_every == 0 or self.step == 1):
                    log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in logs.items() if k in self.shown))
            late = out_of_time(start, c.max_minutes, self.world)
            if self.rank == 0 and (self.step % c.save_every == 0 or late or self.step == end):
                save_checkpoint(self.out, self.save_model, self.optimizer, self.step, asdict(c))
            if late and self.step < end:
                stopped = True
                break
        if self.world > 1:
            check_in_sync(self.model, self.world)
        return TrainResult(self.out, self.step, time.perf_counter() - start, self.history, stopped)

    def finish(self) -> None:
        """Training is over on this rank: unwrap DDP (it holds the process group) and leave the
        group once every rank is here. Every rank calls it, after rank 0 has saved."""
        if self.world > 1:
            self.ddp = getattr(self.ddp, "module", self.ddp)
            if not _dist_teardown(barrier=True):
                warnings.warn(f"rank {self.rank}: {PG_LEFT}", RuntimeWarning, stacklevel=2)

    def save_final(self, summary: dict, seconds: float) -> None:
        """The model and a `training.json` summary into OUT (rank 0 only)."""
        if self.rank != 0:
            return
        self.save_model(self.out)
        summary = {**summary, "steps_done": self.step, "seconds_this_run": round(seconds, 1), "world_size": self.world,
                   "config": asdict(self.config)}
        (self.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
