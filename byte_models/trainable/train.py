"""Training byte-level models (hierarchical or flat) on raw text, under torchrun unchanged.

Every step draws `batch_size` windows of `context_bytes` characters from the corpus (a
function of seed, step and rank, so `resume` continues exactly) and minimises the model's
`text_loss` (next-byte cross-entropy; for a retrofitted hierarchical model plus the
distillation term). The loop (schedule, checkpoints, logging, DDP) is `tokensurgery.training`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tokensurgery.corpus import Corpus
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.training import LoopConfig, TrainLoop, TrainResult

from .flat import FlatByteLM
from .hierarchical import ARCHITECTURE, OLD_CONFIG, HierarchicalLM


@dataclass
class ByteTrainConfig(LoopConfig):
    batch_size: int = 8
    context_bytes: int = 512  # characters per training window
    distill_weight: float = 1.0  # retrofitted hierarchical models only
    stage: str = "all"  # hierarchical only: "all", or for retrofits "distill" / "decoder" (see HierarchicalLM.text_loss)
    bf16_context: bool = False  # stage "decoder": frozen encoder + backbone under bfloat16 autocast


def load_byte_model(folder: str | Path) -> nn.Module:
    """A saved hierarchical or flat byte model."""
    import json

    folder = Path(folder)
    if (folder / OLD_CONFIG).exists():
        return HierarchicalLM.from_pretrained(folder)
    if (folder / "config.json").exists():
        try:
            architectures = json.loads((folder / "config.json").read_text()).get("architectures")
        except ValueError:
            raise TokenSurgeryError(f"{folder}/config.json is not valid JSON") from None
        if architectures == [ARCHITECTURE]:
            return HierarchicalLM.from_pretrained(folder)
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


def _texts(corpus: Corpus, config: ByteTrainConfig, step: int, rank: int, micro: int) -> list[bytes]:
    key = f"{config.seed}:{step}:{rank}" + (f":{micro}" if micro else "")  # micro 0: the pre-accumulation stream
    rng = random.Random(key)
    return [corpus.window(rng, config.context_bytes).encode() for _ in range(config.batch_size)]


def train_bytes(model: nn.Module, corpus: Corpus, out: str | Path, config: ByteTrainConfig | None = None,
                resume: bool = False, force: bool = False, progress: bool = True,
                until: int | None = None) -> TrainResult:
    """Train `model` (ignored when resuming: OUT's checkpoint is loaded) and save it to OUT."""
    loop = TrainLoop(out, config or ByteTrainConfig(), resume, force, progress, desc="training byte model",
                     shown=("step", "loss"))
    config = loop.config
    if resume:
        model = load_byte_model(loop.resume_folder())
    if config.stage != "all" and not isinstance(model, HierarchicalLM):
        raise TokenSurgeryError(f"stage {config.stage!r} is for hierarchical models only")
    wrapped = _Loss(model, config)
    loop.attach(model, forward=wrapped)

    def loss_fn(step: int, micro: int) -> dict:
        loss, n_bytes = loop.ddp(_texts(corpus, config, step, loop.rank, micro))
        return {"loss": loss, "bytes": n_bytes}

    start = time.perf_counter()
    result = loop.run(loss_fn, until=until)
    loop.save_final({"model": type(model).__name__, **corpus.record()}, time.perf_counter() - start)
    loop.finish()
    return result
