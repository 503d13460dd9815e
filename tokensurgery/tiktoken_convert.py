"""tiktoken-style vocabularies (Tekken, Qwen `.tiktoken`) as Hugging Face fast tokenizers.

A checkpoint written with such a tokenizer needs files transformers can load. The BPE model
(merges recovered from the ranks, the vocabulary's regex, then the byte-to-unicode mapping)
comes from transformers' own `TikTokenConverter`, which gives tiktoken's ids on every test
text here (tests/test_tiktoken_convert.py); this module adds what it lacks: Tekken's id offset
(its special tokens come first), the special tokens at their ids, and the role tokens.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

from .errors import TokenSurgeryError
from .vocabulary import TokenKind, Vocabulary


def _backend(vocab: Vocabulary):
    """transformers' conversion of the ranks (shifted by the vocabulary's id offset)."""
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    offset = vocab._tiktoken_offset
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranks.tiktoken"
        path.write_text("\n".join(f"{base64.b64encode(t).decode()} {offset + r}" for t, r in vocab._ranks.items()))
        tok = TikTokenConverter(vocab_file=str(path), pattern=vocab._pattern).converted()
    spec = json.loads(tok.to_str())
    specials = {vocab.tokens[i]: i for i, k in enumerate(vocab.kinds)
                if k in (TokenKind.SPECIAL, TokenKind.UNUSED) and vocab.tokens[i]}
    spec["model"]["vocab"].update(specials)  # in the table, so they keep their ids
    spec["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(spec)), specials


def hf_tokenizer_from_ranks(vocab: Vocabulary):
    """A `transformers.PreTrainedTokenizerFast` that encodes like the tiktoken `vocab`."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    if vocab.family != "tiktoken":
        raise TokenSurgeryError(f"{vocab.name} is a {vocab.family} vocabulary, not a tiktoken one")
    tok, specials = _backend(vocab)
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False)
                            for content, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    roles = {f"{r}_token": vocab.tokens[i] for r, i in vocab.roles.items() if r in ("bos", "eos", "unk", "pad")}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    for content, i in specials.items():
        if fast.convert_tokens_to_ids(content) != i:
            raise TokenSurgeryError(f"{vocab.name}: special token {content!r} landed on id "
                                    f"{fast.convert_tokens_to_ids(content)}, not {i}")
    return fast
