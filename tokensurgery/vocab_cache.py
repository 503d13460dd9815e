"""A disk cache of what `Vocabulary.from_tokenizer_json` reads out of a tokenizer.json.

Reading Gemma-3's 31 MB tokenizer.json costs ~5 s here (JSON parse, the Rust tokenizer, and a
Python pass over 262k tokens); most commands need only the tokens' surface bytes and kinds, and
a vocabulary read from this cache parses the tokenizer itself only when something encodes.
Entries are keyed by a hash of the file's bytes and of `VERSION` (bump it whenever what
`from_hf_tokenizer` computes changes), live in `$TOKENSURGERY_CACHE/vocab/` as `.npz` files
(no pickles), and are written atomically; an unreadable entry is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from .assets import cache_dir, write_cache_file

if TYPE_CHECKING:
    from .vocabulary import Vocabulary

VERSION = 1


def _path(data: bytes):
    key = hashlib.sha256(data + f"|vocab-cache-v{VERSION}".encode()).hexdigest()[:32]
    return cache_dir() / "vocab" / f"{key}.npz"


def _pack(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(b) for b in items), dtype=np.int64, count=len(items))
    return np.frombuffer(b"".join(items), dtype=np.uint8), np.concatenate([[0], np.cumsum(lengths)])


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    data, ends = blob.tobytes(), offsets.tolist()
    return [data[a:b] for a, b in zip(ends[:-1], ends[1:])]


def read_cached(data: bytes) -> dict | None:
    """The fields of the Vocabulary parsed from these tokenizer.json bytes, or None."""
    from .vocabulary import TokenKind

    try:
        with np.load(_path(data), allow_pickle=False) as f:
            kinds = list(TokenKind)
            tokens = [t.decode("utf-8", "surrogatepass") for t in _unpack(f["tokens"], f["token_offsets"])]
            surface = _unpack(f["surface"], f["surface_offsets"])
            out = {"family": str(f["family"]), "tokens": tokens, "surface": surface,
                   "kinds": [kinds[k] for k in f["kinds"].tolist()],
                   "prepends_space": bool(f["prepends_space"]),
                   "bos_added": None if int(f["bos_added"]) < 0 else int(f["bos_added"])}
    except (OSError, ValueError, KeyError, IndexError, EOFError, UnicodeDecodeError):
        return None
    if not len(out["tokens"]) == len(out["surface"]) == len(out["kinds"]):
        return None
    return out


def write_cached(data: bytes, vocab: "Vocabulary") -> None:
    """Store `vocab` under these bytes' key; a cache that cannot be written is not an error."""
    from .vocabulary import TokenKind

    kinds = {k: i for i, k in enumerate(TokenKind)}
    tokens, token_offsets = _pack([t.encode("utf-8", "surrogatepass") for t in vocab.tokens])
    surface, surface_offsets = _pack(list(vocab.surface))
    write_cache_file(_path(data), lambda f: np.savez(
        f, family=np.array(vocab.family), tokens=tokens, token_offsets=token_offsets,
        surface=surface, surface_offsets=surface_offsets,
        kinds=np.array([kinds[k] for k in vocab.kinds], dtype=np.int8),
        prepends_space=np.array(vocab.prepends_space),
        bos_added=np.array(-1 if vocab.bos_added is None else vocab.bos_added)))
