"""The flat byte-level baseline: a transformers decoder whose tokens are the 256 bytes.

Same interface as `HierarchicalLM` for training (`text_loss`), saving and generation, so the
benchmarks can compare them at equal compute. Its backbone sequence is one position per byte.

Optional MrT5-style delete gate (`FlatConfig.gate_layer`): after that many layers a learned
gate G = k * sigmoid(w . LayerNorm(h) + b), k = -30, scores every position; later layers add
G to the attention scores of that position as a key (soft deletion while training, with a
loss term -gate_alpha * mean(sigmoid) that rewards deleting) and drop positions whose
sigmoid exceeds 1/2 as keys at evaluation (hard deletion). In a causal LM every position
still predicts its next byte, so deletion shortens what later layers attend over (the
key/value sequence), not the number of queries.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokensurgery.errors import TokenSurgeryError

BOS = 256
GATE_K = -30.0
GATE_FILE = "delete_gate.safetensors"


@dataclass
class FlatConfig:
    d_model: int = 256
    backbone: dict = field(default_factory=lambda: {"num_hidden_layers": 4, "num_attention_heads": 4,
                                                    "num_key_value_heads": 4, "intermediate_size": 688})
    gate_layer: int | None = None  # MrT5 delete gate after this many layers (None: no gate)
    gate_alpha: float = 0.1  # reward for deleting (nats per byte at 100% deletion)


class DeleteGate(nn.Module):
    """Per-position deletion probability sigmoid(w . LayerNorm(h) + b); starts near 0."""

    def __init__(self, d: int):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(d), nn.Linear(d, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, -3.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(self.norm(h)).squeeze(-1))


class FlatByteLM(nn.Module):
    """A byte-per-position causal LM (a small Llama over 256 bytes + BOS)."""

    def __init__(self, config: FlatConfig | None = None, model: nn.Module | None = None):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = c = config or FlatConfig()
        self.lm = model if model is not None else LlamaForCausalLM(LlamaConfig(
            vocab_size=257, hidden_size=c.d_model, max_position_embeddings=8192, bos_token_id=BOS, eos_token_id=None,
            tie_word_embeddings=True, **c.backbone))
        self.gate = None
        if c.gate_layer is not None:
            if not 0 < c.gate_layer < self.lm.config.num_hidden_layers:
                raise TokenSurgeryError(f"gate_layer must be between 1 and the number of layers - 1, got {c.gate_layer}")
            self.gate = DeleteGate(self.lm.config.hidden_size)

    def logits(self, x: torch.Tensor, hard: bool | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-byte logits for ids `x` (B, T) and, with a delete gate, each position's deletion
        probability (B, T). `hard` (default: in eval mode) drops gated positions outright."""
        if self.gate is None:
            return self.lm(input_ids=x).logits, None
        hard = not self.training if hard is None else hard
        body = self.lm.model
        T = x.shape[1]
        h = body.embed_tokens(x)
        position_ids = torch.arange(T, device=x.device).unsqueeze(0)
        rope = body.rotary_emb(h, position_ids)
        future = torch.full((T, T), float("-inf"), device=x.device, dtype=h.dtype).triu(1)
        mask = future.expand(x.shape[0], 1, T, T)
        p = None
        for i, layer in enumerate(body.layers):
            if i == self.config.gate_layer:
                p = self.gate(h)
                g = torch.where(p > 0.5, float("-inf"), 0.0) if hard else GATE_K * p
                others = 1 - torch.eye(T, device=x.device, dtype=h.dtype)  # a position always sees itself
                g = torch.where(others.bool(), g.unsqueeze(1), 0.0)  # (B, T, T): key j's gate, for queries i != j
                mask = (future + g).unsqueeze(1)
            out = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=position_ids)
            h = out[0] if isinstance(out, tuple) else out
        return self.lm.lm_head(body.norm(h)), p

    def text_loss(self, texts: list[bytes]) -> tuple[torch.Tensor, int]:
        """Mean next-byte cross-entropy (nats) over `texts` cut to a common length, and the
        number of bytes predicted."""
        width = min(len(t) for t in texts)
        if width < 1:
            raise TokenSurgeryError("empty text in a batch")
        device = self.lm.device
        x = torch.tensor([[BOS] + list(t[:width]) for t in texts], device=device)
        logits, p = self.logits(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        if p is not None:
            loss = loss - self.config.gate_alpha * p.mean()
        return loss, len(texts) * width

    @torch.no_grad()
    def generate(self, prompt: bytes, max_new_bytes: int = 64, temperature: float = 1.0, seed: int | None = None) -> bytes:
        if seed is not None:
            torch.manual_seed(seed)
        x = torch.tensor([[BOS] + list(prompt)], device=self.lm.device)
        if self.gate is not None:  # no KV cache through the gate: recompute per byte
            for _ in range(max_new_bytes):
                logits = self.logits(x)[0][0, -1, :BOS]
                nxt = logits.argmax() if temperature <= 0 else torch.multinomial(torch.softmax(logits / temperature, -1), 1)[0]
                x = torch.cat([x, nxt.view(1, 1)], 1)
            return bytes(x[0, len(prompt) + 1:].tolist())
        kwargs = {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": temperature, "top_k": 0}
        out = self.lm.generate(x, max_new_tokens=max_new_bytes, min_new_tokens=max_new_bytes,
                               suppress_tokens=[BOS], pad_token_id=BOS, **kwargs)
        return bytes(out[0, x.shape[1]:].tolist())

    def save_pretrained(self, folder: str | Path) -> Path:
        """A transformers checkpoint; the delete gate (if any) beside it in `delete_gate.safetensors`."""
        from tokensurgery.checkpoint import save_module

        folder = Path(folder)
        self.lm.save_pretrained(folder)
        if self.gate is not None:
            save_module(self.gate, folder / GATE_FILE, metadata={"config": json.dumps(asdict(self.config))})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "FlatByteLM":
        from safetensors import safe_open
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        folder = Path(folder)
        lm = AutoModelForCausalLM.from_pretrained(folder)
        config = FlatConfig(d_model=lm.config.hidden_size)
        if (folder / GATE_FILE).exists():
            with safe_open(str(folder / GATE_FILE), "pt") as f:
                saved = json.loads(f.metadata()["config"])
            config = FlatConfig(**{**asdict(config), "gate_layer": saved["gate_layer"], "gate_alpha": saved["gate_alpha"]})
        model = cls(config, lm)
        if model.gate is not None:
            model.gate.load_state_dict(load_file(str(folder / GATE_FILE)))
        return model
