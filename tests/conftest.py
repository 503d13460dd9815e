"""Shared fixtures: tiny tokenizers trained here, tiny random models, and the bundled models."""

from __future__ import annotations

import pytest

from helpers import make_tiny_model, train_tiny_tokenizer


REAL_FIXTURES = {"smollm2_dir", "gemma_dir", "smollm2_vocab", "gemma_vocab"}


def pytest_configure(config):
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Every test that uses a bundled real model is marked `real` (so `-m "not real"` runs the
    fast suite alone), whatever its author remembered."""
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session")
def tiny_tokenizers():
    """{family: tokenizers.Tokenizer} trained on the bundled Gutenberg text."""
    return {k: train_tiny_tokenizer(k) for k in ("byte_level_bpe", "sentencepiece_bpe", "sentencepiece_unigram", "wordpiece")}


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizers):
    """Tiny Llamas on the byte-level BPE tokenizer: {'tied': folder, 'untied': folder,
    'bos': folder (SentencePiece tokenizer that adds BOS)}."""
    root = tmp_path_factory.mktemp("tiny_models")
    out = {}
    for name, tied, fam in (("tied", True, "byte_level_bpe"), ("untied", False, "byte_level_bpe"), ("bos", True, "sentencepiece_bpe")):
        folder = root / name
        folder.mkdir()
        make_tiny_model(folder, tiny_tokenizers[fam], tied=tied)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def smollm2_dir():
    from tokensurgery.inputs import open_model

    return open_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def gemma_dir():
    from tokensurgery.inputs import open_model

    return open_model("gemma3-270m", progress=False)


@pytest.fixture(scope="session")
def smollm2_vocab(smollm2_dir):
    from tokensurgery import open_vocabulary

    return open_vocabulary(smollm2_dir)


@pytest.fixture(scope="session")
def gemma_vocab(gemma_dir):
    from tokensurgery import open_vocabulary

    return open_vocabulary(gemma_dir)
