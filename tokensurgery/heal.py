"""Heal a transplanted model: train it briefly so it gets back its base's quality.

A transplant (or `hypernet apply`) gives BASE a new tokenizer without training, and the
model ends up well behind BASE. Healing trains the patched model (the *student*) on text for
a few CPU-minutes, with one of these losses:

- `lm` (default: it measured best per CPU-minute, results/heal_light_train.md): plain
  next-token loss on the student's own tokenization (no teacher model needed);
- `alm`: Approximate Likelihood Matching (Minixhofer et al. 2025) against the *teacher*, a
  model with another tokenizer (normally BASE itself): on chunks whose boundaries both
  tokenizations share (`alignment.py`), the student's chunk probability q is pulled towards
  the teacher's p by the binary KL divergence KL(Bern(p^(1/T)) || Bern(q^(1/T))) per chunk.
  Both models score the same bytes after the same preceding bytes, so the teacher's
  knowledge (not only the corpus) guides the student;
- `kd`: token-level distillation where it is well defined without a shared vocabulary: at
  every position whose context ends at the same byte in both tokenizations, KL(teacher ||
  student) over the tokens both vocabularies have (same surface bytes), each distribution
  renormalised over that set. A whole distribution per position instead of one number per
  chunk; approximate where the two tokenizers would spell the next bytes differently. Alone,
  both models compute only the shared tokens' logits (`RowsHead`);
- sums such as `alm+lm`, `kd+lm`, `alm+kd`.

What trains (`train`): `new` = only the embedding rows of tokens the teacher lacks (input
and output), `new+bytes` = those and the rows of tokens the teacher has only as byte-fallback
tokens (`trainable_rows`), `embeddings` = every embedding row; `+lora` adds LoRA adapters
(peft) on the attention and MLP projections, merged into the weights on save (`lora` alone =
every embedding row plus adapters). The default, `new+bytes+lora`, closed 46.9% of the light
pair's gap in 10 minutes against 29.2% for `new+bytes` (results/heal_light_lora.md vs
heal_light_bytes.md), 55.7% in 20 against 35.8%: the rows
learn what the new tokens mean, the adapters let the layers read the new segmentation (SmolLM2
spells Cyrillic or Korean with far more, shorter tokens than the base ever saw).

Runs on the shared loop (`training.py`: schedule, checkpoints, exact `--resume`, time limit,
DDP under torchrun). OUT receives a plain Hugging Face checkpoint (the student's files with
the trained tensors replaced), its model card extended by the healing record, plus the run's
`checkpoint/`, `training_log.jsonl` and `training.json`.
Not handled: students whose tokenizer does not spell text exactly (e.g. an added prefix
space) with the `alm` losses; encoder or encoder-decoder models.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .alignment import align, cut_to_fit, token_ends
from .corpus import Corpus
from .errors import TokenSurgeryError
from .kernels.omp import fast_bfloat16
from .training import LoopConfig, TrainLoop
from .vocab_map import VocabMap
from .vocabulary import TokenKind, Vocabulary

LOSSES = ("alm", "lm", "kd", "alm+lm", "kd+lm", "alm+kd")
TRAINABLE = ("new", "new+bytes", "embeddings", "new+lora", "new+bytes+lora", "lora")
AUTOCAST = ("auto", "bfloat16", "off")
TRAINED_FILE = "trained.safetensors"  # the trained tensors, in a checkpoint folder


@dataclass
class HealConfig(LoopConfig):
    """A healing run's settings (saved with its checkpoints)."""

    steps: int = 200
    lr: float = 3e-4  # Adam moves each coordinate ~lr per step; embedding entries are ~0.04 (Gemma-3): 1e-3 broke rare rows
    lr_warmup: int = 10
    weight_decay: float = 0.0  # AdamW's decay would shrink rows that get no gradient (train=new)
    save_every: int = 50
    loss: str = "lm"  # lm beat kd+lm at equal minutes (results/heal_light_train.md); kd alone made text worse
    train: str = "new+bytes+lora"  # beat new+bytes at equal minutes (results/heal_light_lora.md), which beat new
    batch_size: int = 4  # sequences per micro-batch
    seq_len: int = 256  # tokens per sequence (each tokenization)
    alm_temperature: float = 1.0
    lora_rank: int = 8
    mix: str = "source"  # how training windows are drawn (Corpus.window); source beat chars in results/heal_light_mix.md
    autocast: str = "auto"  # matrix products in bfloat16 (weights stay float32): auto = where bf16 is fast

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise TokenSurgeryError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.train not in TRAINABLE:
            raise TokenSurgeryError(f"train must be one of {', '.join(TRAINABLE)}, got {self.train!r}")
        for name in ("batch_size", "seq_len", "grad_accum", "save_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise TokenSurgeryError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 8:
            raise TokenSurgeryError(f"seq_len must be at least 8 tokens, got {self.seq_len}")
        if self.steps < 0:
            raise TokenSurgeryError(f"steps must not be negative, got {self.steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TokenSurgeryError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.mix not in ("chars", "source"):
            raise TokenSurgeryError(f"mix must be 'chars' or 'source', got {self.mix!r}")
        if self.autocast not in AUTOCAST:
            raise TokenSurgeryError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        if self.alm_temperature <= 0:
            raise TokenSurgeryError(f"alm_temperature must be positive, got {self.alm_temperature}")
        if self.weight_decay and self.train.startswith("new"):
            raise TokenSurgeryError("weight decay with train=new would also shrink the rows that do not train; use 0")


@dataclass
class HealResult:
    out: Path
    steps_done: int
    seconds: float
    stopped_early: bool
    before: dict[str, float] = field(default_factory=dict)  # text name -> bits per byte
    after: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, float] = field(default_factory=dict)
    trained_tensors: int = 0
    trained_rows: int = 0


# ---- losses ----------------------------------------------------------------------------------

def next_token_logits(model, vocab: Vocabulary, rows: list[list[int]]) -> tuple[torch.Tensor, int]:
    """One padded forward pass over `rows` (after `vocab`'s BOS when it adds one). Returns
    (logits, shift): `logits[r, j - shift]` predicts `rows[r][j]`; shift is 0 with a BOS and 1
    without (the first id then has no context)."""
    bos = vocab.bos_added
    seqs = [([bos] if bos is not None else []) + r for r in rows]
    width = max(map(len, seqs))
    device = next(model.parameters()).device
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):  # right padding: positions are 0.. for every row
        x[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    # the last position predicts nothing, but slicing it off would cost a full-size zero
    # gradient in the backward pass; token_logprobs ignores it
    logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.float()
    return logits, 0 if bos is not None else 1


def token_logprobs(logits: torch.Tensor, shift: int, rows: list[list[int]]) -> list[torch.Tensor]:
    """Natural-log probability of each id of each row (NaN for an id without context), from
    `next_token_logits`."""
    # one cross-entropy over the padded batch: slicing `logits` per row would make autograd
    # allocate (and zero) a full-size gradient for every row (~1 s a step with a 49k vocabulary)
    width = logits.shape[1]
    target = torch.full((len(rows), width), -100, dtype=torch.long)
    n = [max(len(row) - shift, 0) for row in rows]
    for r, row in enumerate(rows):
        target[r, : n[r]] = torch.tensor(row[shift:], dtype=torch.long)
    lp = -F.cross_entropy(logits.flatten(0, 1), target.flatten().to(logits.device), reduction="none",
                          ignore_index=-100).view(len(rows), width)
    return [torch.cat([lp.new_full((shift,), float("nan")), lp[r, : n[r]]]) for r in range(len(rows))]


def shared_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, student_cols: torch.Tensor,
              teacher_cols: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per position over the tokens both vocabularies have (columns
    `teacher_cols` / `student_cols` name the same surface bytes), each distribution renormalised
    over that shared set (so the logits of other tokens are not needed)."""
    ls = student_logits[:, student_cols].float()
    lt = teacher_logits[:, teacher_cols].float()
    ls, lt = ls - ls.logsumexp(-1, keepdim=True), lt - lt.logsumexp(-1, keepdim=True)
    return (lt.exp() * (lt - ls)).sum(-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(Bern(p) || Bern(q)) from log p and log q (both < 0), elementwise."""
    eps = 1e-6  # keeps log(1 - q) finite when a chunk is nearly certain
    log_p, log_q = log_p.clamp(max=-eps), log_q.clamp(max=-eps)
    p = log_p.exp()
    return p * (log_p - log_q) + (1 - p) * (_log1mexp(log_p) - _log1mexp(log_q))


def chunk_logprobs(lp: torch.Tensor, chunks: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Sum of token log-probabilities per chunk (NaN where a token was not scored)."""
    return torch.zeros(n_chunks, dtype=lp.dtype, device=lp.device).index_add(0, chunks.to(lp.device), lp)


class RowsHead(torch.nn.Module):
    """An output layer that computes only some columns of another one's logits: the rows
    `cols` of `weight` (kept as a view of the same parameter, so gradients reach it).
    `kd` alone needs both models' logits only over the shared tokens (renormalised there), so
    a 262k-row head computes just those rows."""

    def __init__(self, weight: torch.nn.Parameter, cols: torch.Tensor):
        super().__init__()
        self.weight, self.cols = weight, cols

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight[self.cols])


class _SwappedHead:
    """Context manager: `model`'s output layer replaced by `head` (then put back)."""

    def __init__(self, model, head: torch.nn.Module | None):
        self.model, self.head, self.saved = model, head, None

    def __enter__(self):
        if self.head is not None:
            self.saved = self.model.get_output_embeddings()
            self.model.set_output_embeddings(self.head)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.set_output_embeddings(self.saved)


def autocast_dtype(setting: str, device: str) -> torch.dtype | None:
    """The dtype of a healing step's matrix products under `torch.autocast` (None: float32):
    bfloat16 for 'bfloat16', and for 'auto' where bf16 products are fast (CUDA; CPUs with
    AVX512-BF16 or AMX: 2.4x float32 on a 2-core AMD EPYC, ~1.8x per heal step). Weights,
    gradients and optimizer state stay float32; evaluation never uses it."""
    dev = torch.device(device)
    return torch.bfloat16 if setting == "bfloat16" or (setting == "auto" and fast_bfloat16(dev)) else None


def uses_lora(train: str) -> bool:
    """Whether `train` adds LoRA adapters ('lora' = every embedding row plus adapters)."""
    return "lora" in train.split("+")


def trainable_rows(vm: VocabMap, train: str) -> list[int]:
    """Student ids whose embedding rows train with `train` = new / new+bytes: the tokens the
    teacher lacks, and with +bytes also those the teacher has only as a byte-fallback token
    (`<0xAB>`). Such a row is copied from a token the teacher saw only inside the rare
    characters it spells byte by byte, while a byte-level student spells whole scripts that way
    (SmolLM2 on Korean or Tamil text: 69-77% of the tokens)."""
    rows = list(vm.new)
    if "bytes" in train.split("+"):
        rows += [t for t, s in vm.shared.items() if vm.source.kinds[s] == TokenKind.BYTE_FALLBACK]
    return sorted(rows)


# ---- the trainer -----------------------------------------------------------------------------

def _rng(config: HealConfig, step: int, rank: int, micro: int) -> random.Random:
    return random.Random(f"heal:{config.seed}:{step}:{rank}:{micro}")


class Healer:
    """Student, teacher, corpus and loop of one healing run."""

    def __init__(self, student: str | Path, corpus: Corpus, out: str | Path, config: HealConfig,
                 teacher: str | Path | None = None, resume: bool = False, force: bool = False, progress: bool = True):
        from .checkpoint import check_output
        from .evaluate import load_model
        from .inputs import open_model, vocabulary_of_folder

        config.check()
        if config.loss != "lm" and teacher is None:
            raise TokenSurgeryError(f"loss {config.loss!r} needs a teacher (--teacher BASE); loss 'lm' needs none")
        self.student_dir = open_model(student, progress=progress)
        self.teacher_dir = open_model(teacher, progress=progress) if teacher is not None else None
        inputs = [self.student_dir] + ([self.teacher_dir] if self.teacher_dir else [])
        check_output(out, inputs, force=True)  # only the "not inside an input" rule; the loop does the rest
        self.loop = TrainLoop(out, config, resume, force, progress, desc="healing",
                              shown=("step", "loss", "kd", "alm", "lm", "bpb"))
        self.config, self.corpus, self.out, self.progress = self.loop.config, corpus, Path(out), progress
        self.config.check()
        self.rank = self.loop.rank
        self.amp = autocast_dtype(self.config.autocast, self.config.device)
        self.svocab = vocabulary_of_folder(self.student_dir, name=str(student))
        self.model = load_model(self.student_dir, device=self.config.device)
        if not hasattr(self.model, "get_output_embeddings") or self.model.get_output_embeddings() is None:
            raise TokenSurgeryError(f"{student} is not a causal language model with an output layer")
        self.tvocab = self.teacher = None
        if self.teacher_dir is not None:  # loss lm uses only its vocabulary (which rows are new)
            self.tvocab = vocabulary_of_folder(self.teacher_dir, name=str(teacher))
        if self.teacher_dir is not None and self.config.loss != "lm":
            # float32 on CPU (its products run in bfloat16 under autocast where that is fast)
            dtype = "bfloat16" if self.config.device.startswith("cuda") else "float32"
            self.teacher = load_model(self.teacher_dir, dtype=dtype, device=self.config.device)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        vm = VocabMap.build(self.tvocab, self.svocab) if self.tvocab is not None else None
        self.rows = trainable_rows(vm, self.config.train) if vm is not None else []
        if vm is not None and not vm.shared and "kd" in self.config.loss:
            raise TokenSurgeryError("loss kd compares the tokens both vocabularies share, and they share none")
        device = self.config.device
        self.shared_cols = None if vm is None else (torch.tensor(list(vm.shared), device=device),
                                                    torch.tensor(list(vm.shared.values()), device=device))
        # loss kd alone needs the teacher's logits over the shared tokens only (alm needs them all)
        self.teacher_head = None
        if self.teacher is not None and "alm" not in self.config.loss and self.shared_cols is not None:
            self.teacher_head = RowsHead(self.teacher.get_output_embeddings().weight, self.shared_cols[1])
        if self.config.train.startswith("new") and not self.rows:
            why = "the teacher's vocabulary has every student token" if self.tvocab else "no --teacher was given"
            raise TokenSurgeryError(f"train={self.config.train} trains the rows of tokens the teacher lacks, but {why}")
        self.trainable = self._make_trainable()
        # loss kd alone needs the student's logits over the shared tokens only, too (no lm term);
        # a view of the same output matrix, so its gradient (and train=new's mask) is unchanged
        self.student_head = None
        if self.config.loss == "kd":
            self.student_head = RowsHead(self._hf_student().get_output_embeddings().weight, self.shared_cols[0])
        if resume:
            self._load_trained(self.loop.resume_folder())
        self.loop.attach(self.model, self._save_trained)

    def _hf_student(self):
        """The transformers model inside `self.model` (which peft may wrap)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    # ---- what trains ----

    def _make_trainable(self) -> dict[str, torch.nn.Parameter]:
        c = self.config
        for p in self.model.parameters():
            p.requires_grad_(False)
        if uses_lora(c.train):
            self._add_lora()
        emb = [self.model.get_input_embeddings().weight, self.model.get_output_embeddings().weight]
        if c.train.startswith("new"):
            mask = torch.zeros(emb[0].shape[0], 1, dtype=emb[0].dtype, device=emb[0].device)
            mask[torch.tensor(self.rows)] = 1.0
        for w in {id(w): w for w in emb}.values():
            w.requires_grad_(True)
            if c.train.startswith("new"):
                w.register_hook(lambda g, m=mask: g * m)  # rows of shared tokens get no gradient
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise TokenSurgeryError(f"train={self.config.train} needs peft: pip install peft") from None
        names = {n.rsplit(".", 1)[-1] for n, m in self.model.named_modules() if isinstance(m, torch.nn.Linear)}
        targets = sorted(names & {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                  "c_attn", "c_proj", "c_fc", "query_key_value", "dense"})
        if not targets:
            raise TokenSurgeryError(f"no attention/MLP projections found for LoRA among {sorted(names)[:8]}")
        torch.manual_seed(self.config.seed)
        cfg = LoraConfig(r=self.config.lora_rank, lora_alpha=2 * self.config.lora_rank, target_modules=targets,
                         lora_dropout=0.0, bias="none")
        self.model = get_peft_model(self.model, cfg)

    def _save_trained(self, folder: Path) -> None:
        from .checkpoint import save_tensors

        folder.mkdir(parents=True, exist_ok=True)
        save_tensors({n: p.detach().cpu().contiguous() for n, p in self.trainable.items()}, folder / TRAINED_FILE)

    def _load_trained(self, folder: Path) -> None:
        from safetensors.torch import load_file

        saved = load_file(str(folder / TRAINED_FILE))
        if set(saved) != set(self.trainable):
            raise TokenSurgeryError(f"{folder} holds other tensors than this run trains; resume with the same settings")
        with torch.no_grad():
            for n, p in self.trainable.items():
                p.copy_(saved[n])

    # ---- data and loss ----

    def batch(self, step: int, micro: int) -> list[tuple[list[int], list[int], list[int], list[int]]]:
        """Per sequence: student ids, teacher ids and each one's token end offsets (`token_ends`),
        both covering the same bytes (teacher lists empty for loss lm)."""
        c = self.config
        rng = _rng(c, step, self.rank, micro)
        out = []
        while len(out) < c.batch_size:
            text = self.corpus.window(rng, c.seq_len * 4, c.mix)
            s_ids = self.svocab.encode(text)
            if self.config.loss == "lm":
                s_ids = s_ids[: c.seq_len]
                out.append((s_ids, [], token_ends(self.svocab, s_ids), []))
                continue
            data, t_ids = text.encode(), self.tvocab.encode(text)
            s_ends, t_ends = token_ends(self.svocab, s_ids, data), token_ends(self.tvocab, t_ids, data)
            cut = cut_to_fit(s_ends, t_ends, c.seq_len, c.seq_len)
            if cut == 0:
                continue  # no shared boundary within seq_len tokens (e.g. a long run of one script)
            n_s, n_t = sum(e <= cut for e in s_ends), sum(e <= cut for e in t_ends)
            out.append((s_ids[:n_s], t_ids[:n_t], s_ends[:n_s], t_ends[:n_t]))
        return out

    def loss(self, step: int, micro: int) -> dict:
        c = self.config
        batch = self.batch(step, micro)
        s_rows = [s for s, _, _, _ in batch]
        amp = torch.autocast(torch.device(c.device).type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with amp, _SwappedHead(self._hf_student(), self.student_head):
            s_logits, s_shift = next_token_logits(self.loop.ddp, self.svocab, s_rows)
        logs, s_cols = {}, self.shared_cols[0] if self.shared_cols is not None else None
        if self.student_head is None:
            s_lp = token_logprobs(s_logits, s_shift, s_rows)
            n_bytes = sum(ends[-1] for _, _, ends, _ in batch if ends)
            scored = torch.cat([lp[~lp.isnan()] for lp in s_lp])
            lm = -scored.mean()
            logs = {"lm": lm.detach(), "bpb": -scored.detach().sum() / math.log(2) / n_bytes}
        else:  # kd alone: columns = the shared tokens; no next-token loss to report
            lm, s_cols = None, torch.arange(s_logits.shape[-1], device=s_logits.device)
        if c.loss == "lm":
            return {"loss": lm, **logs}
        t_rows = [t for _, t, _, _ in batch]
        t_cols = self.shared_cols[1] if self.shared_cols is not None else None
        with torch.no_grad(), amp, _SwappedHead(self.teacher, self.teacher_head):
            t_logits, t_shift = next_token_logits(self.teacher, self.tvocab, t_rows)
            if self.teacher_head is None:
                t_lp = token_logprobs(t_logits, t_shift, t_rows)
            else:  # columns = the shared tokens, in the order of shared_cols
                t_cols = torch.arange(t_logits.shape[-1], device=t_logits.device)
        kls, kds = [], []
        for r, (s_ids, t_ids, s_ends, t_ends) in enumerate(batch):
            if "alm" in c.loss:
                a = align(s_ends, t_ends)
                sc = chunk_logprobs(s_lp[r], a.chunk_a, a.n_chunks)
                tc = chunk_logprobs(t_lp[r].to(sc.dtype), a.chunk_b, a.n_chunks)
                ok = ~(sc.isnan() | tc.isnan())
                kls.append(binary_kl(tc[ok] / c.alm_temperature, sc[ok] / c.alm_temperature))
            if "kd" in c.loss:  # positions whose context ends at the same byte in both tokenizations
                t_pos = {([0] + t_ends)[j]: j - t_shift for j in range(t_shift, len(t_ids))}
                pairs = [(j - s_shift, t_pos[o]) for j, o in enumerate([0] + s_ends[:-1]) if j >= s_shift and o in t_pos]
                if pairs:
                    ps, pt = torch.tensor(pairs).T
                    kds.append(shared_kl(s_logits[r, ps], t_logits[r, pt].to(s_logits.dtype), s_cols, t_cols))
        parts = {"lm": lm}
        if kls:  # (every chunk of the batch may be unscored: short rows without BOS)
            chunk_kl = torch.cat(kls)
            parts["alm"] = chunk_kl.mean() if chunk_kl.numel() else s_logits.sum() * 0.0
            logs["alm"] = parts["alm"].detach()
        if "kd" in c.loss:  # no aligned position in the whole batch: nothing to distill this step
            parts["kd"] = torch.cat(kds).mean() if kds else s_logits.sum() * 0.0
            logs["kd"] = parts["kd"].detach()
        total = sum(parts[name] for name in c.loss.split("+") if name in parts)
        return {"loss": total, **{k: v.detach() if torch.is_tensor(v) else v for k, v in logs.items()}}

    # ---- run ----

    def run(self, eval_files: list[Path] = (), max_bytes: int | None = None, until: int | None = None) -> HealResult:
        from .evaluate import score_files

        def scores(model, vocab) -> dict[str, float]:
            model.eval()
            return {s.name: s.bits_per_byte for s in score_files(model, vocab, list(eval_files), max_bytes=max_bytes,
                                                                  progress=False)} if eval_files else {}

        before = scores(self.model, self.svocab) if self.rank == 0 else {}
        teacher = scores(self.teacher, self.tvocab) if self.rank == 0 and self.teacher is not None else {}
        start = time.perf_counter()
        result = self.loop.run(self.loss, until=until)
        seconds = time.perf_counter() - start
        after = scores(self.model, self.svocab) if self.rank == 0 else {}
        res = HealResult(self.out, result.steps_done, seconds, result.stopped_early, before, after, teacher,
                         len(self.trainable), len(self.rows) if self.config.train.startswith("new") else 0)
        if self.rank == 0:
            self._write(res)
        self.loop.finish()
        return res

    def _write(self, res: HealResult) -> None:
        """The healed model as a plain checkpoint in OUT (staged, then moved in), and the record."""
        from .checkpoint import write_updated_checkpoint

        model = self.model.merge_and_unload() if uses_lora(self.config.train) else self.model
        record = self.record(res)
        staging = Path(tempfile.mkdtemp(prefix=".healed-", dir=self.out))
        try:
            changed = write_updated_checkpoint(self.student_dir, staging / "model", model,
                                               card_section=healing_card(record))
            for f in (staging / "model").iterdir():
                if (self.out / f.name).exists() and (self.out / f.name).is_file():
                    (self.out / f.name).unlink()
                f.rename(self.out / f.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        record["tensors_written"] = changed
        (self.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    def record(self, res: HealResult) -> dict:
        c = self.config
        return {"student": str(self.student_dir), "teacher": str(self.teacher_dir) if self.teacher_dir else None,
                "loss": c.loss, "train": c.train, "steps_done": res.steps_done, "minutes": round(res.seconds / 60, 2),
                "stopped_at_time_limit": res.stopped_early, **self.corpus.record(),
                "autocast": str(self.amp).removeprefix("torch.") if self.amp else "off",
                "trained_tensors": res.trained_tensors, "trained_rows": res.trained_rows,
                "bits_per_byte_before": res.before, "bits_per_byte_after": res.after,
                "bits_per_byte_teacher": res.teacher, "world_size": self.loop.world, "config": asdict(c)}


def healing_card(record: dict) -> str:
    """The model card section a healing run adds."""
    lines = ["## Healing", "", f"`tokensurgery heal` with loss `{record['loss']}`, trained `{record['train']}`, "
             f"{record['steps_done']} steps in {record['minutes']} min on {record['corpus_chars']:,} characters "
             f"of text ({', '.join(record['corpus'])}); teacher `{record['teacher']}`.", ""]
    before, after, teacher = record["bits_per_byte_before"], record["bits_per_byte_after"], record["bits_per_byte_teacher"]
    if before:
        lines += ["| text | bits/byte before | after | teacher |", "|---|---|---|---|"]
        for name in before:
            t = f"{teacher[name]:.4f}" if name in teacher else ""
            lines.append(f"| {name} | {before[name]:.4f} | {after.get(name, float('nan')):.4f} | {t} |")
        lines.append("")
    return "\n".join(lines)


def heal(student: str | Path, out: str | Path, corpus: Corpus, config: HealConfig | None = None,
         teacher: str | Path | None = None, eval_files: list[Path] = (), max_bytes: int | None = None,
         resume: bool = False, force: bool = False, progress: bool = True) -> HealResult:
    """Heal STUDENT (any causal LM, normally a `transplant` output) on `corpus`, distilling
    `teacher` (normally the transplant's BASE) with the ALM losses; write the result to OUT.
    `eval_files` are scored before and after (bits per byte, in the result and the card)."""
    healer = Healer(student, corpus, out, config or HealConfig(), teacher, resume, force, progress)
    return healer.run(eval_files, max_bytes)
