"""The flat byte-level baseline: a transformers decoder whose tokens are the 256 bytes.

Same interface as `HierarchicalLM` for training (`text_loss`), saving and generation, so the
benchmarks can compare them at equal compute. Its backbone sequence is one position per byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokensurgery.errors import TokenSurgeryError

BOS = 256


@dataclass
class FlatConfig:
    d_model: int = 256
    backbone: dict = field(default_factory=lambda: {"num_hidden_layers": 4, "num_attention_heads": 4,
                                                    "num_key_value_heads": 4, "intermediate_size": 688})


class FlatByteLM(nn.Module):
    """A byte-per-position causal LM (a small Llama over 256 bytes + BOS)."""

    def __init__(self, config: FlatConfig | None = None, model: nn.Module | None = None):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = c = config or FlatConfig()
        self.lm = model if model is not None else LlamaForCausalLM(LlamaConfig(
            vocab_size=257, hidden_size=c.d_model, max_position_embeddings=8192, bos_token_id=BOS, eos_token_id=None,
            tie_word_embeddings=True, **c.backbone))

    def text_loss(self, texts: list[bytes]) -> tuple[torch.Tensor, int]:
        """Mean next-byte cross-entropy (nats) over `texts` cut to a common length, and the
        number of bytes predicted."""
        width = min(len(t) for t in texts)
        if width < 1:
            raise TokenSurgeryError("empty text in a batch")
        device = self.lm.device
        x = torch.tensor([[BOS] + list(t[:width]) for t in texts], device=device)
        logits = self.lm(input_ids=x[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)), len(texts) * width

    @torch.no_grad()
    def generate(self, prompt: bytes, max_new_bytes: int = 64, temperature: float = 1.0, seed: int | None = None) -> bytes:
        if seed is not None:
            torch.manual_seed(seed)
        x = torch.tensor([[BOS] + list(prompt)], device=self.lm.device)
        kwargs = {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": temperature, "top_k": 0}
        out = self.lm.generate(x, max_new_tokens=max_new_bytes, min_new_tokens=max_new_bytes,
                               suppress_tokens=[BOS], pad_token_id=BOS, **kwargs)
        return bytes(out[0, x.shape[1]:].tolist())

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.lm.save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "FlatByteLM":
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(folder)
        return cls(FlatConfig(d_model=lm.config.hidden_size), lm)
