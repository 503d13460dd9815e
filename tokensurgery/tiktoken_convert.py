"""tiktoken-style vocabularies (Tekken, Qwen `.tiktoken`) as Hugging Face fast tokenizers.

A checkpoint written with such a tokenizer needs files transformers can load. tiktoken keeps
only ranks; a `tokenizers` BPE model needs merges. Every way of cutting a token into two
tokens of lower rank is a merge, ordered by the rank of the result (then by the parts'
ranks), and a pre-token that is itself a token is taken whole (`ignore_merges`), as tiktoken
does. The pre-tokenizer is the vocabulary's own regex, then the byte-to-unicode mapping.
"""

from __future__ import annotations

from .errors import TokenSurgeryError
from .vocabulary import BYTE_TO_CHAR, TokenKind, Vocabulary


def _merges(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges += [(rank, a_rank, b_rank, a, b) for a_rank, b_rank, a, b in splits]
    merges.sort()
    show = lambda data: "".join(BYTE_TO_CHAR[b] for b in data)  # noqa: E731
    return [(show(a), show(b)) for *_, a, b in merges]


def hf_tokenizer_from_ranks(vocab: Vocabulary):
    """A `transformers.PreTrainedTokenizerFast` that encodes like the tiktoken `vocab`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab.family != "tiktoken":
        raise TokenSurgeryError(f"{vocab.name} is a {vocab.family} vocabulary, not a tiktoken one")
    ranks, offset = vocab._ranks, vocab._tiktoken_offset
    table = {"".join(BYTE_TO_CHAR[b] for b in data): offset + r for data, r in ranks.items()}
    specials = [(i, vocab.tokens[i]) for i, k in enumerate(vocab.kinds)
                if k in (TokenKind.SPECIAL, TokenKind.UNUSED) and vocab.tokens[i]]
    table.update({content: i for i, content in specials})  # in the table, so they keep their ids
    tok = Tokenizer(models.BPE(vocab=table, merges=_merges(ranks), ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(vocab._pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False) for _, content in sorted(specials)])
    roles = {f"{r}_token": vocab.tokens[i] for r, i in vocab.roles.items() if r in ("bos", "eos", "unk", "pad")}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    for i, content in specials:
        if fast.convert_tokens_to_ids(content) != i:
            raise TokenSurgeryError(f"{vocab.name}: special token {content!r} landed on id "
                                    f"{fast.convert_tokens_to_ids(content)}, not {i}")
    return fast
