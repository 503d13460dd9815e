"""The ZeTT hypernetwork: a token's base pieces in, its input and output embeddings out.

Pieces are embedded with the frozen base embeddings (input and output concatenated when
the base is untied; learned vectors for fallback bytes), standardised with the base
embeddings' per-dimension mean/std, projected, given learned position vectors and run
through a small pre-norm transformer encoder; the first position's output (ZeTT's
pooling) goes through one head per embedding matrix and is scaled back to the base
statistics.

`residual=True` (default) adds the heads' output to the FVT estimate (the mean of the
pieces' base rows) with zero-initialised heads, so an untrained hypernetwork *is* FVT and
training learns corrections; `residual=False` is the paper's plain form.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tokensurgery.checkpoint import Embeddings
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.training import from_known

from .pieces import N_FALLBACK, by_length

WEIGHTS = "hypernet.safetensors"
CONFIG = "hypernet_config.json"


@dataclass
class HypernetConfig:
    """Shape of a hypernetwork and the base model it belongs to."""

    base_vocab_size: int
    base_hidden_size: int
    base_tied: bool
    hidden_size: int = 0  # 0: the base's hidden size
    num_layers: int = 3
    num_heads: int = 0  # 0: hidden_size // 64
    intermediate_size: int = 0  # 0: 2 x hidden_size
    max_pieces: int = 8
    predict_output: bool = True  # a separate output-embedding head (unties a tied base)
    residual: bool = True  # heads add to the FVT estimate
    base_name: str = ""
    base_fingerprint: list[float] | None = None  # a few statistics of the base input embeddings

    def __post_init__(self):
        self.hidden_size = self.hidden_size or self.base_hidden_size
        self.num_heads = self.num_heads or max(1, self.hidden_size // 64)
        self.intermediate_size = self.intermediate_size or 2 * self.hidden_size
        if self.hidden_size % self.num_heads:
            raise TokenSurgeryError(f"hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
        if self.max_pieces < 1:
            raise TokenSurgeryError(f"max_pieces must be at least 1, got {self.max_pieces}")

    @classmethod
    def from_dict(cls, d: dict) -> "HypernetConfig":
        return from_known(cls, d)


def fingerprint(matrix: torch.Tensor) -> list[float]:
    """Statistics that tell one base's embeddings from another's (checked when applying)."""
    m = matrix.float()
    return [round(float(x), 4) for x in (m.mean(), m.std(), m[0].norm(), m[-1].norm(), m[m.shape[0] // 2].norm())]


class Hypernet(nn.Module):
    """Predicts embedding rows for tokens given as base piece ids (see the module docstring).

    The base embeddings are attached with `attach` (not saved with the hypernetwork)."""

    def __init__(self, config: HypernetConfig):
        super().__init__()
        self.config = c = config
        d, h = c.base_hidden_size, c.hidden_size
        self.untied_pieces = not c.base_tied
        src = 2 * d if self.untied_pieces else d
        self.fallback_input = nn.Parameter(torch.zeros(N_FALLBACK, d))
        self.fallback_output = nn.Parameter(torch.zeros(N_FALLBACK, d)) if self.untied_pieces else None
        self.project = nn.Sequential(nn.Linear(src, h), nn.GELU(), nn.Linear(h, h))
        self.position = nn.Parameter(torch.randn(c.max_pieces, h) * 0.02)
        layer = nn.TransformerEncoderLayer(h, c.num_heads, c.intermediate_size, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        self.head_input = nn.Linear(h, d)
        self.head_output = nn.Linear(h, d) if c.predict_output else None
        if c.residual:
            for head in (self.head_input, self.head_output):
                if head is not None:
                    nn.init.zeros_(head.weight)
                    nn.init.zeros_(head.bias)
        self._attached = False

    # ---- the base embeddings ------------------------------------------------------------

    def attach(self, base: Embeddings, check: bool = True) -> "Hypernet":
        """Use `base`'s embeddings as the (frozen) piece tables; checks they are the base the
        hypernetwork was made for."""
        c = self.config
        inp = base.input.float()
        if tuple(inp.shape) != (c.base_vocab_size, c.base_hidden_size):
            raise TokenSurgeryError(f"base embeddings have shape {tuple(inp.shape)}; this hypernetwork was made for "
                                    f"[{c.base_vocab_size}, {c.base_hidden_size}] ({c.base_name or 'unnamed base'})")
        if check and c.base_fingerprint is not None:
            got = fingerprint(inp)
            if any(abs(a - b) > 1e-3 * max(1.0, abs(b)) for a, b in zip(got, c.base_fingerprint)):
                raise TokenSurgeryError(f"these are not the embeddings this hypernetwork was trained for "
                                        f"({c.base_name or 'unnamed base'}): statistics {got} != {c.base_fingerprint}")
        out = inp if base.tied else base.output.float()
        if not base.tied and c.base_tied:
            raise TokenSurgeryError("this hypernetwork was made for a tied base, but the base has an output matrix")
        device = self.position.device
        self.register_buffer("base_input", inp.to(device), persistent=False)
        self.register_buffer("base_output", out.to(device), persistent=False)
        for name, m in (("input", inp), ("output", out)):
            self.register_buffer(f"mean_{name}", m.mean(0).to(device), persistent=False)
            self.register_buffer(f"std_{name}", m.std(0).clamp(min=1e-6).to(device), persistent=False)
        if not self._attached:  # fallback bytes start at the mean row
            with torch.no_grad():
                if not self.fallback_input.abs().any():
                    self.fallback_input.copy_(self.mean_input.expand_as(self.fallback_input))
                if self.fallback_output is not None and not self.fallback_output.abs().any():
                    self.fallback_output.copy_(self.mean_output.expand_as(self.fallback_output))
        self._attached = True
        return self

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inp = torch.cat([self.base_input, self.fallback_input])
        fb_out = self.fallback_output if self.fallback_output is not None else self.fallback_input
        out = torch.cat([self.base_output, fb_out])
        return inp, out

    # ---- prediction ---------------------------------------------------------------------

    def forward(self, pieces: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input and output embedding rows (n, d) for n tokens given as piece-id lists of
        any lengths (grouped by length, so no padding; the two are one tensor without an
        output head). One call per step keeps DistributedDataParallel happy."""
        if not self._attached:
            raise TokenSurgeryError("attach the base embeddings first (Hypernet.attach)")
        d, device = self.config.base_hidden_size, self.position.device
        rows_in, rows_out = torch.empty(len(pieces), d, device=device), torch.empty(len(pieces), d, device=device)
        tables = self._tables()
        for rows, ids in by_length(pieces):
            a, b = self._predict(ids.to(device), tables)
            rows_in = rows_in.index_put((rows.to(device),), a)
            rows_out = rows_out.index_put((rows.to(device),), b)
        return rows_in, (rows_out if self.head_output is not None else rows_in)

    def _predict(self, pieces: torch.Tensor, tables) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows for tokens of equal piece count: `pieces` (n, length) base/fallback ids."""
        n, length = pieces.shape
        if not 0 < length <= self.config.max_pieces:
            raise TokenSurgeryError(f"{length} pieces; this hypernetwork takes 1 to {self.config.max_pieces}")
        table_in, table_out = tables
        x_in, x_out = table_in[pieces], table_out[pieces]  # (n, L, d)
        z = (x_in - self.mean_input) / self.std_input
        if self.untied_pieces:
            z = torch.cat([z, (x_out - self.mean_output) / self.std_output], -1)
        z = self.project(z) + self.position[:length]
        pooled = self.norm(self.encoder(z)[:, 0])  # ZeTT pools the first piece's position
        pred_in = self.head_input(pooled) * self.std_input
        pred_out = self.head_output(pooled) * self.std_output if self.head_output is not None else pred_in
        if self.config.residual:
            return pred_in + x_in.mean(1), pred_out + x_out.mean(1)
        return pred_in + self.mean_input, pred_out + self.mean_output

    # ---- saving -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Weights (safetensors) and configuration (JSON) into `folder` (created)."""
        from tokensurgery.checkpoint import save_module

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_module(self, folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, base: Embeddings | None = None, check: bool = True) -> "Hypernet":
        """Load a saved hypernetwork (and attach `base` when given)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
            raise TokenSurgeryError(f"{folder} is not a saved hypernetwork (needs {CONFIG} and {WEIGHTS})")
        try:
            config = HypernetConfig.from_dict(json.loads((folder / CONFIG).read_text()))
            state = load_file(str(folder / WEIGHTS))
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise TokenSurgeryError(f"{folder}: corrupt hypernetwork files ({str(e).splitlines()[0][:160]})") from None
        model = cls(config)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise TokenSurgeryError(f"{folder}: weights do not match the configuration ({str(e).splitlines()[0][:160]})") from None
        model._attached = False
        if base is not None:
            model.attach(base, check=check)
        return model


def hypernet_for(base: Embeddings, name: str = "", **options) -> Hypernet:
    """A new (untrained) hypernetwork for `base`, attached."""
    config = HypernetConfig(base_vocab_size=base.input.shape[0], base_hidden_size=base.input.shape[1],
                            base_tied=base.tied, base_name=name, base_fingerprint=fingerprint(base.input), **options)
    return Hypernet(config).attach(base)
