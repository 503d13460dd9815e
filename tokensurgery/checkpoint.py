"""Checkpoint I/O: find a model's embeddings and write patched Hugging Face checkpoints.

Writes are atomic (built in a hidden folder beside the output, renamed at the end), tensors
are streamed shard by shard from the base's safetensors so a model is never held twice,
and inputs are never modified.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from .errors import TokenSurgeryError
from .output_tokenizer import TOKENIZER_FILES

DEFAULT_SHARD_BYTES = 2 * 1024**3

# Names of input / output embedding tensors across common architectures (embeddings-only path).
_INPUT_NAMES = re.compile(r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embeddings\.word_embeddings|token_embd|emb)\.weight$")
_OUTPUT_NAMES = re.compile(r"(^|\.)(lm_head|output|embed_out|head)\.weight$")


# ---- atomic folders -----------------------------------------------------------------------

def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_output(out: str | Path, inputs: list[Path] = (), force: bool = False) -> Path:
    """Refuse an output inside (or around) an input, and a non-empty output without `force`."""
    out = Path(out).expanduser()
    for src in map(Path, inputs):
        if _inside(src, out) or (src.is_dir() and _inside(out, src)):
            raise TokenSurgeryError(f"output {out} is inside (or contains) the input {src}; choose another output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise TokenSurgeryError(f"output {out} already exists and is not empty; use --force to replace it")
    return out


@contextmanager
def atomic_folder(out: str | Path, force: bool = False, inputs: list[Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out`, on error it is
    removed. Refuses a non-empty `out` without `force` and an `out` inside (or around) an input."""
    out = check_output(out, inputs, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _make_readable(tmp)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def _umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; give the result ordinary permissions (umask applies)."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


# ---- safetensors --------------------------------------------------------------------------

def write_safetensors(folder: Path, tensors: Iterator[tuple[str, torch.Tensor]], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write `(name, tensor)` pairs into `model.safetensors`, or into shards with
    `model.safetensors.index.json` when the total exceeds `max_shard_bytes`. Only one shard
    is held in memory at a time."""
    shards: list[tuple[str, list[str]]] = []
    current: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush():
        nonlocal current, size
        if current:
            name = f"shard-{len(shards):05d}.tmp"
            save_tensors(current, folder / name, metadata={"format": "pt"})
            shards.append((name, list(current)))
            current, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            flush()
        current[name] = tensor.detach().contiguous()
        size += nbytes
        total += nbytes
    flush()
    if len(shards) == 1:
        (folder / shards[0][0]).rename(folder / "model.safetensors")
        return ["model.safetensors"]
    weight_map, names = {}, []
    for k, (tmp_name, keys) in enumerate(shards):
        final = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / tmp_name).rename(folder / final)
        names.append(final)
        weight_map.update({key: final for key in keys})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def safetensors_files(folder: Path) -> dict[str, Path]:
    """tensor name -> file holding it, for a single-file or sharded safetensors checkpoint."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise TokenSurgeryError(f"{index} is not a valid safetensors index") from None
        return {k: folder / v for k, v in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise TokenSurgeryError(f"{folder} holds only pickle weights (.bin/.pt); convert them to safetensors first")
        raise TokenSurgeryError(f"{folder} has no .safetensors weights")
    out = {}
    for f in files:
        for k in _safe_keys(f):
            out[k] = f
    return out


def _safe_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as e:
        raise TokenSurgeryError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None


def read_tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(name)
    except Exception as e:
        raise TokenSurgeryError(f"cannot read tensor {name} from {path} ({str(e).splitlines()[0][:120]})") from None


def stream_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint, one at a time, in file order."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for name, f in safetensors_files(folder).items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        try:
            with safe_open(str(f), "pt") as handle:
                for name in names:
                    yield name, handle.get_tensor(name)
        except TokenSurgeryError:
            raise
        except Exception as e:
            raise TokenSurgeryError(f"{f} is truncated or corrupt ({str(e).splitlines()[0][:120]})") from None


# ---- config -------------------------------------------------------------------------------

def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise TokenSurgeryError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenSurgeryError(f"{path} is not valid JSON") from None


def text_config(config: dict) -> dict:
    """The language-model part of a config (nested `text_config` for multimodal models)."""
    return config.get("text_config") or config


# ---- embeddings ---------------------------------------------------------------------------

@dataclass
class Embeddings:
    """A checkpoint's token embeddings: `input` [rows, hidden], `output` (None when tied)."""

    input: torch.Tensor
    output: torch.Tensor | None
    input_name: str
    output_name: str | None
    vocab_size: int  # config's vocab_size (rows beyond the tokenizer are padding)

    @property
    def tied(self) -> bool:
        return self.output is None


def embedding_names(folder: Path) -> tuple[str, str | None]:
    """Names of the input and output embedding tensors in the checkpoint's files.

    A causal LM with the standard layout (`model.embed_tokens.weight`, `lm_head.weight` or
    none) is read off its keys; anything else goes through transformers (the model is built
    on the meta device, so nothing is allocated; importing its modeling code takes seconds,
    hence the fast path), then, for architectures transformers cannot instantiate, by name."""
    folder = Path(folder)
    config = read_config(folder)
    keys = safetensors_files(folder)
    names = _names_of_standard_layout(keys, config)
    if names is None:
        names = _names_via_transformers(folder, keys)
    if names is None:
        names = _names_by_pattern(keys, config)
    inp, out = names
    tie = text_config(config).get("tie_word_embeddings", config.get("tie_word_embeddings", True))
    if out is not None and out not in keys:
        out = None
    if out is None and tie is False:
        raise TokenSurgeryError(f"{folder}: config says the output embeddings are untied but no lm_head tensor was found")
    return inp, out


def _match_key(param: str, keys) -> str | None:
    if param in keys:
        return param
    hits = [k for k in keys if k.endswith(param) or param.endswith(k)]
    if len(hits) == 1:
        return hits[0]
    tail = param.split(".", 1)[-1]
    hits = [k for k in keys if k.endswith(tail)]
    return hits[0] if len(hits) == 1 else None


_STANDARD_INPUTS = ("model.embed_tokens.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight")
_STANDARD_OUTPUTS = ("lm_head.weight", "embed_out.weight")


def _names_of_standard_layout(keys, config: dict) -> tuple[str, str | None] | None:
    """The names when the checkpoint is a `...ForCausalLM` whose only embedding-like keys
    are one standard input name and at most one standard output name (None otherwise)."""
    archs = config.get("architectures") or []
    if not archs or not all(a.endswith("ForCausalLM") for a in archs):
        return None
    inputs, outputs = _embedding_like(keys)
    if len(inputs) != 1 or inputs[0] not in _STANDARD_INPUTS or len(outputs) > 1 or \
            (outputs and outputs[0] not in _STANDARD_OUTPUTS):
        return None
    return inputs[0], outputs[0] if outputs else None


def _names_via_transformers(folder: Path, keys) -> tuple[str, str | None] | None:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception:
        return None
    ids: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        ids.setdefault(id(p), n)  # a tied matrix keeps its first (input) name
    inp = ids.get(id(model.get_input_embeddings().weight))
    out_mod = model.get_output_embeddings()
    out = ids.get(id(out_mod.weight)) if out_mod is not None else None
    inp_key = _match_key(inp, keys) if inp else None
    if inp_key is None:
        return None
    out_key = _match_key(out, keys) if out else None
    if out_key == inp_key:
        out_key = None
    return inp_key, out_key


def _embedding_like(keys) -> tuple[list[str], list[str]]:
    """Keys named like input embeddings, and (other) keys named like output embeddings."""
    inputs = [k for k in keys if _INPUT_NAMES.search(k)]
    return inputs, [k for k in keys if _OUTPUT_NAMES.search(k) and k not in inputs]


def _names_by_pattern(keys, config: dict) -> tuple[str, str | None]:
    inputs, outputs = _embedding_like(keys)
    if len(inputs) != 1:
        raise TokenSurgeryError(f"cannot find the input embedding tensor (candidates: {inputs or 'none'}); "
                                "unsupported architecture")
    return inputs[0], outputs[0] if len(outputs) == 1 else None


def load_embeddings(folder: str | Path) -> Embeddings:
    """Read only the embedding matrices of a checkpoint (works for any architecture)."""
    folder = Path(folder)
    inp, out = embedding_names(folder)
    files = safetensors_files(folder)
    E = read_tensor(files[inp], inp)
    O = read_tensor(files[out], out) if out else None
    config = read_config(folder)
    vocab_size = int(text_config(config).get("vocab_size") or E.shape[0])
    if E.ndim != 2 or (O is not None and O.shape != E.shape):
        raise TokenSurgeryError(f"{folder}: embedding shapes {tuple(E.shape)} / {None if O is None else tuple(O.shape)} are not [vocab, hidden]")
    return Embeddings(E, O, inp, out, vocab_size)


def _all_finite(m: torch.Tensor) -> bool:
    """Whether every entry is finite. A NaN or infinite entry makes the sum non-finite, so the
    cheap sum decides unless it overflowed; only then is every entry checked (elementwise
    `isfinite` over a 262k-row matrix takes seconds, the sum milliseconds)."""
    return bool(torch.isfinite(m.sum(dtype=torch.float32))) or bool(torch.isfinite(m).all())


def check_embeddings_cover(emb: Embeddings, vocab_len: int, where: str) -> None:
    """The embedding matrix must have a row for every token id of the tokenizer."""
    if emb.input.shape[0] < vocab_len:
        raise TokenSurgeryError(f"{where}: the embedding matrix has {emb.input.shape[0]} rows but the tokenizer has "
                                f"{vocab_len} tokens")
    if any(m is not None and not _all_finite(m) for m in (emb.input, emb.output)):
        raise TokenSurgeryError(f"{where}: the embeddings contain NaN or infinite values")


# ---- the patched-checkpoint writer --------------------------------------------------------

@dataclass
class NewEmbeddings:
    """Embedding matrices for a new vocabulary (`output` None keeps the model tied)."""

    input: torch.Tensor
    output: torch.Tensor | None = None


def write_patched_checkpoint(
    base: str | Path,
    out: str | Path,
    embeddings: NewEmbeddings,
    tokenizer,
    special_ids: dict[str, int | None],
    card: str,
    force: bool = False,
    extra_inputs: list[Path] = (),
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write BASE's weights with replaced embeddings, the new tokenizer, an updated config
    (vocab size, special ids, tie flag), a generation config and a model card, atomically.

    `tokenizer` is a transformers tokenizer (saved with `save_pretrained`) or a folder whose
    tokenizer files are copied."""
    base = Path(base)
    config = read_config(base)
    inp_name, out_name = embedding_names(base)
    files = safetensors_files(base)
    old = read_tensor(files[inp_name], inp_name)
    E = embeddings.input
    if E.ndim != 2 or E.shape[1] != old.shape[1]:
        raise TokenSurgeryError(f"new input embeddings have shape {tuple(E.shape)}; expected [*, {old.shape[1]}]")
    tied = embeddings.output is None
    if not tied and embeddings.output.shape != E.shape:
        raise TokenSurgeryError(f"output embeddings {tuple(embeddings.output.shape)} do not match input {tuple(E.shape)}")
    dtype = old.dtype
    del old

    def tensors():
        for name, tensor in stream_tensors(base):
            if name == inp_name:
                yield name, E.to(dtype)
            elif name == out_name:
                if not tied:
                    yield name, embeddings.output.to(dtype)
            else:
                yield name, tensor
        if not tied and out_name is None:  # a tied base gets its own output matrix
            yield "lm_head.weight", embeddings.output.to(dtype)

    with atomic_folder(out, force=force, inputs=[base, *extra_inputs]) as tmp:
        write_safetensors(tmp, tensors(), max_shard_bytes)
        new_config = _patched_config(config, E.shape[0], special_ids, tied)
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        _write_tokenizer(tokenizer, tmp)
        gen = _generation_config(base, new_config, special_ids)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(card)
    return Path(out)


def _patched_config(config: dict, vocab_size: int, special_ids: dict[str, int | None], tied: bool) -> dict:
    config = json.loads(json.dumps(config))
    targets = [config] + ([config["text_config"]] if isinstance(config.get("text_config"), dict) else [])
    for c in targets:
        if "vocab_size" in c or c is targets[-1]:
            c["vocab_size"] = vocab_size
        for role in ("bos", "eos", "pad"):
            if role in special_ids:
                c[f"{role}_token_id"] = special_ids[role]
        c["tie_word_embeddings"] = tied
    return config


def _generation_config(base: Path, config: dict, special_ids: dict[str, int | None]) -> dict:
    path = base / "generation_config.json"
    gen = json.loads(path.read_text()) if path.exists() else {}
    for role in ("bos", "eos", "pad"):
        if role in special_ids:
            gen[f"{role}_token_id"] = special_ids[role]
    gen.setdefault("transformers_version", config.get("transformers_version", ""))
    return gen



def _write_tokenizer(tokenizer, folder: Path) -> None:
    if isinstance(tokenizer, (str, Path)):
        src = Path(tokenizer)
        copied = 0
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, folder / name)
                copied += 1
        if not copied:
            raise TokenSurgeryError(f"{src} holds no tokenizer files")
    else:
        tokenizer.save_pretrained(folder)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, then ordinary file permissions (umask applies): safetensors
    0.8 writes its files readable by their owner only (0600), which a shared model folder cannot use."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    Path(path).chmod(0o666 & ~_umask())


def save_module(module: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """A module's weights as one safetensors file (CPU, contiguous), tagged as ours."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_tensors(state, path, metadata={"format": "pt", "library": "tokensurgery", **(metadata or {})})


def write_updated_checkpoint(src: str | Path, out: str | Path, model: torch.nn.Module, card_section: str = "",
                             force: bool = False, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[str]:
    """Write SRC's checkpoint with every tensor `model` changed (trained, merged adapters)
    replaced by the model's value in SRC's dtype, atomically; SRC's other files (config,
    tokenizer, generation config) are copied and `card_section` is appended to its model card.
    A tensor counts as changed when it differs from SRC's after the cast; names are matched
    like `embedding_names` (the model's parameter name, or the one checkpoint key ending with it).
    Returns the names of the replaced tensors."""
    src = Path(src)
    state = {n: t for n, t in model.state_dict().items()}
    keys = safetensors_files(src)
    by_key = {}
    for n in state:
        k = _match_key(n, keys)
        if k is not None:
            by_key.setdefault(k, n)
    changed: list[str] = []

    def tensors():
        for name, tensor in stream_tensors(src):
            mine = state.get(by_key.get(name, ""))
            if mine is not None and mine.shape == tensor.shape:
                mine = mine.detach().to(device="cpu", dtype=tensor.dtype)
                if not torch.equal(mine, tensor):
                    changed.append(name)
                    tensor = mine
            yield name, tensor

    skip = {"model.safetensors.index.json", "README.md", "training.json", "training_log.jsonl"}
    with atomic_folder(out, force=force, inputs=[src]) as tmp:
        write_safetensors(tmp, tensors(), max_shard_bytes)
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in skip:
                shutil.copy2(f, tmp / f.name)
        card = (src / "README.md").read_text() if (src / "README.md").exists() else "# Healed model\n"
        (tmp / "README.md").write_text(card.rstrip() + "\n\n" + card_section.strip() + "\n")
    return changed
