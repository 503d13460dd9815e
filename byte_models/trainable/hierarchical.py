"""Byte2Word encoder and a hierarchical autoregressive byte model (HAT-style).

`Byte2Word`: byte embeddings (+ position in the word), optional bidirectional layers inside
each word, then one learned query per head cross-attends to that word's bytes -> one vector
per word. Pooling runs flat over all bytes (segment softmax); the per-word layers run on words
grouped by length (`kernels.segments.per_length`), so nothing is padded.

`HierarchicalLM`: words (from `splitter.split_words`) -> Byte2Word -> a word-level
transformers decoder (any model taking `inputs_embeds`; a small Llama by default, or a
pretrained backbone) -> a byte decoder: word j's bytes are predicted from the backbone output
after words < j (a learned start vector stands in front of the first word; the output is both
the decoder's first position and added to every byte position), then its own previous bytes,
ending with an end-of-word symbol (id 256). No byte sees a later word.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokensurgery.errors import TokenSurgeryError
from tokensurgery.training import from_known
from tokensurgery.kernels.segments import per_length, positions_in_segment, segment_ids, segment_softmax, segment_sum

from .splitter import split_words

EOW = 256  # end-of-word symbol of the byte decoder
STAGES = ("all", "distill", "decoder")  # what `text_loss` trains; the last two are for retrofits
WEIGHTS, CONFIG = "model.safetensors", "config.json"
OLD_CONFIG = "hierarchical_config.json"  # folders saved before config.json (still read)
ARCHITECTURE = "HierarchicalLM"


@dataclass
class HierarchicalConfig:
    """Sizes of the byte encoder/decoder and of the default word backbone."""

    d_byte: int = 128
    d_model: int = 256
    byte_heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 2
    max_word_bytes: int = 16
    backbone: dict = field(default_factory=lambda: {"num_hidden_layers": 4, "num_attention_heads": 4,
                                                    "num_key_value_heads": 4, "intermediate_size": 688})

    @classmethod
    def from_dict(cls, d: dict) -> "HierarchicalConfig":
        return from_known(cls, d)


def _layers(d: int, heads: int, n: int) -> nn.TransformerEncoder | None:
    if n == 0:
        return None
    layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)


class Byte2Word(nn.Module):
    """Bytes of each word -> one vector per word (see the module docstring)."""

    def __init__(self, d_byte: int, d_out: int, heads: int = 4, layers: int = 1, max_len: int = 16):
        super().__init__()
        if d_byte % heads:
            raise TokenSurgeryError(f"d_byte {d_byte} is not divisible by {heads} heads")
        self.heads, self.max_len = heads, max_len
        self.byte = nn.Embedding(256, d_byte)
        self.position = nn.Embedding(max_len, d_byte)
        self.layers = _layers(d_byte, heads, layers)
        self.query = nn.Parameter(torch.randn(heads, d_byte // heads) * 0.02)
        self.key, self.value = nn.Linear(d_byte, d_byte), nn.Linear(d_byte, d_byte)
        self.out = nn.Linear(d_byte, d_out)

    def forward(self, data: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`data` (N,) bytes of all words back to back, `lengths` (W,) -> (W, d_out)."""
        if int(lengths.max()) > self.max_len:
            raise TokenSurgeryError(f"a word of {int(lengths.max())} bytes; this encoder takes at most {self.max_len}")
        seg, n = segment_ids(lengths), len(lengths)
        x = self.byte(data) + self.position(positions_in_segment(lengths))
        if self.layers is not None:
            x = per_length(self.layers, x, lengths)
        dh = x.shape[1] // self.heads
        k = self.key(x).view(-1, self.heads, dh)
        v = self.value(x).view(-1, self.heads, dh)
        p = segment_softmax((k * self.query).sum(-1) / math.sqrt(dh), seg, n)  # (N, heads)
        return self.out(segment_sum(p.unsqueeze(-1) * v, seg, n).reshape(n, -1))


def llama_backbone(layers: int, d_model: int) -> dict:
    """Llama sizes for a backbone of `layers` x `d_model`: 64-wide heads, SwiGLU at 8/3 x width."""
    heads = max(1, d_model // 64)
    return {"num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "intermediate_size": int(d_model * 8 / 3)}


def default_backbone(config: HierarchicalConfig) -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(hidden_size=config.d_model, vocab_size=1, max_position_embeddings=4096,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=None, **config.backbone))


class HierarchicalLM(nn.Module):
    """Byte encoder -> word backbone -> byte decoder (see the module docstring)."""

    def __init__(self, config: HierarchicalConfig | None = None, backbone: nn.Module | None = None):
        super().__init__()
        self.config = c = config or HierarchicalConfig()
        self.encoder = Byte2Word(c.d_byte, c.d_model, c.byte_heads, c.encoder_layers, c.max_word_bytes)
        self.backbone = backbone if backbone is not None else default_backbone(c)
        self.start = nn.Parameter(torch.randn(c.d_model) * 0.02)
        self.to_bytes = nn.Linear(c.d_model, c.d_byte)
        self.dec_byte = nn.Embedding(256, c.d_byte)
        self.dec_position = nn.Embedding(c.max_word_bytes + 1, c.d_byte)
        self.decoder = _layers(c.d_byte, c.byte_heads, c.decoder_layers)
        self.norm = nn.LayerNorm(c.d_byte)
        self.head = nn.Linear(c.d_byte, 257)

    # ---- batches ------------------------------------------------------------------------

    def words_of(self, data: bytes) -> list[bytes]:
        return split_words(data, self.config.max_word_bytes)

    def _flat(self, words: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.start.device
        lengths = torch.tensor([len(w) for w in words], device=device)
        data = torch.tensor(list(b"".join(words)), dtype=torch.long, device=device)
        return data, lengths

    # ---- the model ----------------------------------------------------------------------

    def forward(self, batch: list[list[bytes]], frozen_context: bool = False, bf16_context: bool = False) -> torch.Tensor:
        """Logits (sum of (len(word) + 1), 257) for B sequences of W words each, flat: for each
        word in order, one row per byte it predicts and a last row predicting EOW.
        `frozen_context` runs the encoder and backbone without gradients (a retrofit's
        decoder-only stage: a third of the cost when the backbone is large); `bf16_context`
        runs them under bfloat16 autocast (about half again on CPUs with bf16 support)."""
        n_words = {len(words) for words in batch}
        if len(n_words) != 1 or 0 in n_words:
            raise TokenSurgeryError("every sequence in a batch needs the same (non-zero) number of words")
        B, W = len(batch), n_words.pop()
        words = [w for seq in batch for w in seq]
        data, lengths = self._flat(words)
        autocast = torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=bf16_context)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_context), autocast:
            e = self.encoder(data, lengths).view(B, W, -1)
            inputs = torch.cat([self.start.expand(B, 1, -1), e[:, :-1]], 1)  # word j sees words < j only
            h = self.backbone(inputs_embeds=inputs).last_hidden_state.reshape(B * W, -1)
        return self._decode(h.float(), data, lengths)

    def _decode(self, h: torch.Tensor, data: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Each word's decoder sequence is [h, its bytes], flat: word w's rows start at
        cumsum(lengths + 1)[w - 1]."""
        cond = self.to_bytes(h)  # (W, d_byte)
        seg = segment_ids(lengths)
        x = self.dec_byte(data) + self.dec_position(positions_in_segment(lengths) + 1) + cond[seg]
        ext = lengths + 1
        first = torch.cumsum(ext, 0) - ext  # row of each word's h
        rows = torch.cat([cond + self.dec_position.weight[0], x])
        source = torch.empty(len(rows), dtype=torch.long, device=rows.device)
        source[first] = torch.arange(len(lengths), device=rows.device)
        source[first[seg] + 1 + positions_in_segment(lengths)] = len(lengths) + torch.arange(len(data), device=rows.device)
        seq = rows[source]
        if self.decoder is not None:
            seq = per_length(self._causal, seq, ext)
        return self.head(self.norm(seq))

    def _causal(self, block: torch.Tensor) -> torch.Tensor:
        n = block.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=block.device), 1)
        return self.decoder(block, mask=mask, is_causal=True)

    @staticmethod
    def targets(words: list[bytes], device=None) -> torch.Tensor:
        """What each row of `forward` predicts: every word's bytes, then EOW."""
        return torch.tensor([s for w in words for s in (*w, EOW)], dtype=torch.long, device=device)

    def nats(self, batch: list[list[bytes]], frozen_context: bool = False, bf16_context: bool = False
             ) -> tuple[torch.Tensor, int]:
        """Summed next-symbol cross-entropy (nats; bytes and each word's EOW) and the byte count."""
        logits = self(batch, frozen_context, bf16_context)
        words = [w for seq in batch for w in seq]
        total = F.cross_entropy(logits, self.targets(words, logits.device), reduction="sum")
        return total, sum(len(w) for w in words)

    def loss(self, batch: list[list[bytes]], frozen_context: bool = False, bf16_context: bool = False
             ) -> tuple[torch.Tensor, int]:
        """Mean next-symbol cross-entropy (nats; bytes and each word's EOW) and the byte count."""
        total, n_bytes = self.nats(batch, frozen_context, bf16_context)
        return total / (n_bytes + sum(len(seq) for seq in batch)), n_bytes

    def text_loss(self, texts: list[bytes], distill_weight: float = 1.0, stage: str = "all",
                  bf16_context: bool = False) -> tuple[torch.Tensor, int]:
        """Training loss for raw texts, split into words and cut to a common word count.
        Returns (loss, bytes). Stages (see `STAGES`): "all" = next-byte loss, plus
        `distill_weight` x `distill_loss` for a retrofitted model; "distill" = only the
        encoder's distillation loss (no backbone call); "decoder" = next-byte loss with the
        encoder and backbone frozen (`bf16_context`: under bfloat16 autocast)."""
        if stage not in STAGES:
            raise TokenSurgeryError(f"unknown training stage {stage!r}; choose from {', '.join(STAGES)}")
        retrofit = getattr(self, "subword_vocab", None) is not None
        if stage == "distill" and not retrofit:
            raise TokenSurgeryError("the distill stage needs a model made with HierarchicalLM.from_subword")
        batch = [self.words_of(t) for t in texts]
        n = min(len(b) for b in batch)
        if n == 0:
            raise TokenSurgeryError("empty text in a batch")
        batch = [b[:n] for b in batch]
        if stage == "distill":
            return self.distill_loss(batch), sum(len(w) for seq in batch for w in seq)
        loss, n_bytes = self.loss(batch, frozen_context=stage == "decoder", bf16_context=bf16_context and stage == "decoder")
        if stage == "all" and distill_weight and retrofit:
            loss = loss + distill_weight * self.distill_loss(batch)
        return loss, n_bytes

    # ---- retrofitting a subword model ----------------------------------------------------

    @classmethod
    def from_subword(cls, spec: str | Path, config: HierarchicalConfig | None = None,
                     freeze_backbone: bool = True) -> "HierarchicalLM":
        """A hierarchical model whose word backbone is a pretrained subword model's decoder
        (its token embeddings and LM head are not used). `distill_loss` then pulls word
        vectors towards that model's own embeddings of each word, so the backbone sees
        inputs like the ones it was trained on."""
        from tokensurgery.inputs import open_model
        from tokensurgery.evaluate import load_model

        folder = open_model(spec)
        lm = load_model(folder)
        width = lm.get_input_embeddings().weight.shape[1]
        config = HierarchicalConfig(**{**asdict(config or HierarchicalConfig()), "d_model": width})
        model = cls(config, lm.base_model)
        model.attach_subword(folder, lm, spec=str(spec))
        role = next((r for r in ("bos", "eos") if r in model.subword_vocab.roles), None)
        with torch.no_grad():  # the backbone saw documents start after BOS (or the previous one's EOS)
            row = model.subword_embeddings[model.subword_vocab.roles[role]] if role else model.subword_embeddings.mean(0)
            model.start.copy_(row)
        if freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        return model

    def attach_subword(self, folder: Path, lm=None, spec: str | None = None) -> None:
        """Remember the subword model whose word embeddings `distill_loss` aims at (`spec`:
        how the user named it, e.g. a bundled alias, saved so a moved folder finds it again)."""
        from tokensurgery.evaluate import load_model
        from tokensurgery.inputs import vocabulary_of_folder

        lm = lm if lm is not None else load_model(folder)
        self.subword_source = str(Path(folder).resolve())
        self.subword_spec = spec
        self.subword_vocab = vocabulary_of_folder(Path(folder))
        emb = lm.get_input_embeddings()
        scale = getattr(emb, "embed_scale", None)  # Gemma scales its inputs
        self.subword_embeddings = emb.weight.detach() * (scale if scale is not None else 1.0)

    def word_targets(self, words: list[bytes]) -> torch.Tensor:
        """The subword model's view of each word: the mean input embedding of its tokens."""
        if not hasattr(self, "subword_vocab"):
            raise TokenSurgeryError("word targets need a model made with HierarchicalLM.from_subword")
        rows = []
        for w in words:
            ids = [i for i in self.subword_vocab.decompose(w) if i < self.subword_embeddings.shape[0]]
            rows.append(self.subword_embeddings[ids].mean(0) if ids else self.subword_embeddings.mean(0))
        return torch.stack(rows).to(self.start.device)

    def distill_loss(self, batch: list[list[bytes]]) -> torch.Tensor:
        """Mean squared distance of the word vectors to `word_targets`, relative to the
        targets' variance (0 = the subword model's own embedding of every word)."""
        words = [w for seq in batch for w in seq]
        data, lengths = self._flat(words)
        target = self.word_targets(words)
        return ((self.encoder(data, lengths) - target) ** 2).mean() / target.var(0).mean().clamp(min=1e-8)

    # ---- generation ---------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt: bytes, max_new_bytes: int = 64, temperature: float = 1.0, seed: int | None = None) -> bytes:
        """Continue `prompt` byte by byte; a word ends at EOW or where the splitter would cut."""
        g = torch.Generator(device="cpu")
        if seed is not None:
            g.manual_seed(seed)
        words = self.words_of(prompt)
        current = words.pop() if words else b""
        out = b""
        while len(out) < max_new_bytes:
            inputs = [self.start.view(1, -1)]
            if words:
                data, lengths = self._flat(words)
                inputs.append(self.encoder(data, lengths))
            h = self.backbone(inputs_embeds=torch.cat(inputs).unsqueeze(0)).last_hidden_state[0, -1:]
            while len(out) < max_new_bytes:
                data, lengths = self._flat([current])
                logits = self._decode(h, data, lengths)[len(current)].float().cpu()
                if len(current) >= self.config.max_word_bytes:
                    logits[:EOW] = float("-inf")
                if temperature <= 0:
                    sym = int(logits.argmax())
                else:
                    sym = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
                if sym == EOW or (current and len(self.words_of(current + bytes([sym]))) > 1):
                    if current:
                        words.append(current)
                    current = b"" if sym == EOW else bytes([sym])
                    out += b"" if sym == EOW else bytes([sym])
                    break
                current += bytes([sym])
                out += bytes([sym])
        return out

    # ---- saving -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Weights (safetensors) and configuration; the backbone's config goes along when it
        is a transformers model."""
        from tokensurgery.checkpoint import save_module

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_module(self, folder / WEIGHTS)
        meta = {"architectures": [ARCHITECTURE], "library_name": "tokensurgery", "config": asdict(self.config)}
        if hasattr(self.backbone, "config"):
            meta["backbone_config"] = self.backbone.config.to_dict()
        if getattr(self, "subword_source", None):
            # the alias / hub id when there is one (found anywhere), else the folder, relative to
            # this one (survives moving both together) and absolute (survives moving this one)
            meta["subword"] = {"spec": _portable_spec(getattr(self, "subword_spec", None)),
                               "relative": os.path.relpath(self.subword_source, folder.resolve()),
                               "absolute": self.subword_source}
        meta["backbone_frozen"] = not any(p.requires_grad for p in self.backbone.parameters())
        (folder / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "HierarchicalLM":
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        folder = Path(folder)
        config_file = folder / CONFIG if (folder / CONFIG).exists() else folder / OLD_CONFIG
        if not config_file.exists() or not (folder / WEIGHTS).exists():
            raise TokenSurgeryError(f"{folder} is not a saved hierarchical model (needs {CONFIG} and {WEIGHTS})")
        try:
            meta = json.loads(config_file.read_text())
            state = load_file(str(folder / WEIGHTS))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise TokenSurgeryError(f"{folder}: corrupt model files ({str(e).splitlines()[0][:160]})") from None
        if config_file.name == CONFIG and meta.get("architectures") != [ARCHITECTURE]:
            raise TokenSurgeryError(f"{folder} holds a {meta.get('architectures')} model, not a hierarchical byte model")
        config = HierarchicalConfig.from_dict(meta["config"])
        backbone = None
        if "backbone_config" in meta:
            bc = dict(meta["backbone_config"])
            backbone = AutoModel.from_config(AutoConfig.for_model(bc.pop("model_type"), **bc))
        model = cls(config, backbone)
        model.load_state_dict(state)
        subword = meta.get("subword") or ({"absolute": meta["subword_source"]} if meta.get("subword_source") else None)
        if subword:
            found = _find_subword(folder, subword)
            if found is None:
                from tokensurgery.progress import log

                log(f"warning: {folder}: the subword model it was retrofitted from ({subword.get('spec') or subword.get('absolute')}) "
                    "is not found; the model runs, but the distill/all training stages need it")
            else:
                model.attach_subword(found, spec=subword.get("spec"))
        if meta.get("backbone_frozen"):
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        return model


def _portable_spec(spec: str | None) -> str | None:
    """A subword spec that resolves on any machine (bundled alias or hub id), else None."""
    from tokensurgery.inputs import hub_id

    if spec is None:
        return None
    from tokensurgery.assets import BUNDLED

    return spec if spec in BUNDLED or hub_id(spec) == spec else None


def _find_subword(folder: Path, saved: dict) -> Path | None:
    """The saved subword model's folder: by alias / hub id, else relative, else absolute path."""
    if saved.get("spec"):
        from tokensurgery.inputs import open_model

        try:
            return open_model(saved["spec"], progress=False)
        except TokenSurgeryError:
            pass
    for key, base in (("relative", folder.resolve()), ("absolute", None)):
        if saved.get(key):
            path = (base / saved[key]) if base is not None else Path(saved[key])
            if (path / "config.json").exists():
                return path.resolve()
    return None
