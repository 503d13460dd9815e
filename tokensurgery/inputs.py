"""Opening what users hand to a command: every model and tokenizer input goes through here.

- `open_model(spec)`: a bundled alias, a `.gguf` file, a local checkpoint folder or a hub id
  -> a local Hugging Face checkpoint folder (GGUF imported once, see `assets.import_gguf`).
- `open_vocabulary(spec)`: any model input above, or a tokenizer folder, `tokenizer.json`,
  SentencePiece `.model`, Tekken `.json` or `.tiktoken` file -> `Vocabulary`.
- `open_tokenizer(spec)`: the same inputs -> `TokenizerInput`: the Vocabulary, a folder of
  Hugging Face tokenizer files a checkpoint writer can copy (converted into a temporary
  folder for `.model`, Tekken and `.tiktoken` files), and the checkpoint folder when the
  input was a model with weights.

Not handled: slow-only tokenizers with no `tokenizer.json` and no converter in transformers;
`.tiktoken` files other than Qwen's (its regex and special tokens are assumed).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .assets import BUNDLED, import_gguf
from .errors import TokenSurgeryError
from .output_tokenizer import TEMP_PREFIX
from .vocabulary import Vocabulary, roles_from_hf_files

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")



# ---- models -------------------------------------------------------------------------------

def open_model(spec: str | Path, progress: bool = True) -> Path:
    """A bundled alias, a `.gguf` file, a local checkpoint folder or a hub id -> local folder."""
    s = str(spec)
    if s in BUNDLED:
        return import_gguf(BUNDLED[s].gguf(), progress=progress)
    path = Path(s).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return import_gguf(path, progress=progress)
        if path.is_file():
            raise TokenSurgeryError(f"{path} is a file; give a checkpoint folder, a .gguf file or a bundled alias")
        if not (path / "config.json").exists():
            raise TokenSurgeryError(f"{path} has no config.json: not a Hugging Face model folder")
        return path
    if _HUB_ID.match(s) and not s.startswith((".", "/", "~")) and not s.endswith((".gguf", ".json", ".safetensors")):
        return _download(s)
    raise TokenSurgeryError(f"no such file, folder or bundled model: {s} (bundled: {', '.join(BUNDLED)})")


def _download(repo_id: str) -> Path:
    """Online users: fetch a hub checkpoint (weights as safetensors only, never pickles)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                               "*.tiktoken"]))
    except Exception as e:
        raise TokenSurgeryError(f"could not fetch {repo_id!r} from the hub ({e.__class__.__name__}); "
                                "give a local folder, a .gguf file or a bundled alias") from None


def hub_id(spec: str | Path) -> str | None:
    """The hub id a model input stands for, when known (a bundled alias's original, or a hub
    id itself); None for local folders and files."""
    s = str(spec)
    if s in BUNDLED:
        return BUNDLED[s].hub_id
    if _HUB_ID.match(s) and not Path(s).expanduser().exists():
        return s
    return None


# ---- tokenizers ---------------------------------------------------------------------------

@dataclass
class TokenizerInput:
    """An opened tokenizer input (see `open_tokenizer`). Call `close()` (or use `with`) to
    remove the temporary folder of a converted tokenizer."""

    vocab: Vocabulary
    files: Path  # folder of HF tokenizer files (tokenizer.json, tokenizer_config.json, ...)
    model: Path | None = None  # checkpoint folder when the input is a model (weights may be absent)
    temporary: list[Path] = field(default_factory=list)

    def has_weights(self) -> bool:
        return self.model is not None and any(self.model.glob("*.safetensors"))

    def close(self) -> None:
        for folder in self.temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self.temporary.clear()

    def __enter__(self) -> "TokenizerInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tokenizer(spec: str | Path, progress: bool = True) -> TokenizerInput:
    """Any model or tokenizer input -> `TokenizerInput` (see the module docstring)."""
    s = str(spec)
    path = Path(s).expanduser()
    if path.is_file() and path.suffix != ".gguf":
        vocab = open_vocabulary(path)
        if vocab.family == "tiktoken":  # Tekken / Qwen: written as an equivalent HF fast tokenizer
            from .tiktoken_convert import hf_tokenizer_from_ranks

            return _saved(vocab, hf_tokenizer_from_ranks(vocab))
        if ".model" in path.name:
            return _saved(vocab, sentencepiece_tokenizer(path))
        if path.name == "tokenizer.json":
            return TokenizerInput(vocab, path.parent)
        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        shutil.copy(path, folder / "tokenizer.json")
        return TokenizerInput(vocab, folder, temporary=[folder])
    if path.is_dir() and not (path / "config.json").exists():
        if not any((path / n).exists() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise TokenSurgeryError(f"{path} holds neither a model (config.json) nor tokenizer files")
        return TokenizerInput(vocabulary_of_folder(path, name=s), path)
    folder = open_model(spec, progress=progress)
    return TokenizerInput(vocabulary_of_folder(folder, name=s), folder, model=folder)


def _saved(vocab: Vocabulary, hf_tokenizer) -> TokenizerInput:
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    hf_tokenizer.save_pretrained(folder)
    return TokenizerInput(vocab, folder, temporary=[folder])


def open_vocabulary(spec: str | Path, progress: bool = True) -> Vocabulary:
    """Vocabulary of any model or tokenizer input (see the module docstring)."""
    s = str(spec)
    path = Path(s).expanduser()
    if path.is_file() and path.suffix != ".gguf":
        name = path.name
        if name.endswith(".tiktoken"):
            return Vocabulary.from_tiktoken(path, QWEN_PATTERN, _qwen_specials(path), name=s)
        if name.endswith(".json"):
            if name.startswith("tekken") or _looks_like_tekken(path):
                return Vocabulary.from_tekken(path, name=s)
            return _vocabulary_of_tokenizer_json(path, s)
        if ".model" in name:
            tok = sentencepiece_tokenizer(path)
            return Vocabulary.from_hf_tokenizer(tok.backend_tokenizer, roles=_roles_of(tok), name=s)
        raise TokenSurgeryError(f"{path}: give a model or tokenizer folder, a tokenizer.json, a SentencePiece .model, "
                                "a Tekken .json or a .tiktoken file")
    if path.is_dir() and not (path / "config.json").exists():
        return vocabulary_of_folder(path, name=s)
    return vocabulary_of_folder(open_model(s, progress=progress), name=s)


def vocabulary_of_folder(folder: Path, name: str = "") -> Vocabulary:
    """The Vocabulary of a checkpoint or tokenizer folder (tokenizer.json, else whatever
    transformers reads)."""
    if (folder / "tokenizer.json").exists():
        return _vocabulary_of_tokenizer_json(folder / "tokenizer.json", name or str(folder))
    tok = hf_tokenizer(folder)
    return Vocabulary.from_hf_tokenizer(tok.backend_tokenizer, roles=_roles_of(tok), name=name or str(folder))


def _vocabulary_of_tokenizer_json(path: Path, name: str) -> Vocabulary:
    """A tokenizer.json, with role tokens from the tokenizer_config.json beside it if any."""
    vocab = Vocabulary.from_tokenizer_json(path, name=name)
    vocab.roles = vocab._infer_roles(roles_from_hf_files(path.parent, vocab.tokens))
    return vocab


def hf_tokenizer(folder: Path):
    """transformers' fast tokenizer for a folder (never with remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:
        raise TokenSurgeryError(f"cannot read the tokenizer in {folder}: {str(e).splitlines()[0][:200]}") from None


def sentencepiece_tokenizer(path: Path):
    """An HF fast tokenizer converted from a SentencePiece `.model` file (Llama-style)."""
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(path, Path(tmp) / "tokenizer.model")
        try:
            return LlamaTokenizer.from_pretrained(tmp)
        except Exception as e:
            raise TokenSurgeryError(f"{path} is not a SentencePiece model ({str(e).splitlines()[0][:160]})") from None


def _roles_of(tok) -> dict[str, int]:
    roles = {}
    for role in ("bos", "eos", "pad", "unk", "mask"):
        i = getattr(tok, f"{role}_token_id", None)
        if isinstance(i, int):
            roles[role] = i
    return roles


def _looks_like_tekken(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b'"config"' in head and b'"default_num_special_tokens"' in head


QWEN_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _qwen_specials(path: Path) -> dict[str, int]:
    """Qwen's special tokens follow its ranks: <|endoftext|>, <|im_start|>, <|im_end|>, extras."""
    n = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
    return {t: n + i for i, t in enumerate(names)}
