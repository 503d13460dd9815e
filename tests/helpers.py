"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SITE = Path(importlib.util.find_spec("tokenizers").origin).parent.parent


def corpus_lines(limit_bytes: int = 60_000, langs=("en", "de", "fr", "zh")) -> list[str]:
    from tokensurgery.assets import corpus_text

    lines = []
    for lang in langs:
        lines += corpus_text(lang, limit_bytes).splitlines()
    return [line for line in lines if line.strip()]


def train_tiny_tokenizer(kind: str):
    """A small tokenizer of one family, trained on the bundled Gutenberg text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    lines = corpus_lines()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    if kind == "byte_level_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "sentencepiece_bpe":  # Gemma-style: ▁ for spaces, <0xXX> byte fallback, BOS added
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=700, limit_alphabet=150, special_tokens=specials + [f"<0x{b:02X}>" for b in range(256)])
    elif kind in ("sentencepiece_bpe_metaspace", "sentencepiece_bpe_prepend"):
        # Llama-2/Mistral-style conversions that add a word-start space: Metaspace with
        # prepend_scheme "first" (at the text's start only, and not before a leading space) or
        # a Prepend normalizer (before every section of text, also after special tokens)
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        if kind.endswith("metaspace"):
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
            tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        else:
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        trainer = trainers.BpeTrainer(vocab_size=700, limit_alphabet=150, special_tokens=specials + [f"<0x{b:02X}>" for b in range(256)])
    elif kind == "sentencepiece_unigram":  # Llama-2 style Metaspace, prefix space at the start
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token="<unk>")
        lines = corpus_lines(langs=("en", "de", "fr"))
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=800, limit_alphabet=200, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    else:
        raise ValueError(kind)
    tok.train_from_iterator(lines, trainer)
    if kind == "sentencepiece_bpe":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def save_hf_tokenizer(tok, folder: Path, roles: dict[str, str]):
    """Save a tokenizers.Tokenizer as an HF tokenizer folder with role tokens."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{r}_token": t for r, t in roles.items()})
    fast.save_pretrained(folder)
    return fast


def make_tiny_model(folder: Path, tok, tied: bool = True, roles=None, seed: int = 0, extra_rows: int = 0):
    """A random 2-layer Llama with `tok` as its tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    roles = roles or {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
    fast = save_hf_tokenizer(tok, folder, roles)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size() + extra_rows, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tied, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder)
    return model


def site_file(*parts: str) -> Path:
    path = SITE.joinpath(*parts)
    if not path.exists():  # the assets extra is part of the test set-up: a missing file is a failure, not a skip
        pytest.fail(f"{path} not installed (bash scripts/setup.sh installs the assets extra)")
    return path


def torchrun_cli(args: list[str], timeout: int = 600):
    """Run `tokensurgery ARGS` under torchrun with 2 CPU processes (one thread each) on a free port."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "tokensurgery.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)


def assert_torchrun_ok(r) -> None:
    """Both ranks exited 0, and neither warned that the process group outlived training (the
    deterministic sign of the exit-time abort that otherwise shows only in some runs)."""
    from tokensurgery.training import PG_LEFT

    assert r.returncode == 0, r.stderr[-3000:]
    assert PG_LEFT not in r.stderr, r.stderr[-3000:]
