"""Checkpoint I/O: embeddings lookup, the patched-checkpoint writer (round trip, shards,
atomicity), GGUF import of both bundled models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokensurgery.checkpoint import NewEmbeddings, atomic_folder, embedding_names, load_embeddings, write_patched_checkpoint
from tokensurgery.model_card import model_card
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.evaluate import load_model
from tokensurgery.inputs import hf_tokenizer


def _logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def _rewrite_identity(base, out, **kw):
    emb = load_embeddings(base)
    special = {"bos": 1, "eos": 2, "pad": 3}
    card = model_card("identity", str(base), {"base": str(base)}, "identity", {"k": 0})
    return write_patched_checkpoint(base, out, NewEmbeddings(emb.input.clone(), None if emb.tied else emb.output.clone()),
                                    base, special, card, **kw)


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_identity_round_trip_reproduces_base(tiny_model_dirs, tmp_path, which):
    base = tiny_model_dirs[which]
    emb = load_embeddings(base)
    assert emb.tied == (which == "tied")
    assert emb.input_name == "model.embed_tokens.weight" and (emb.output_name == "lm_head.weight") == (which == "untied")
    out = _rewrite_identity(base, tmp_path / "out")
    ids = AutoTokenizer.from_pretrained(out)("Hello world, this is a test.")["input_ids"]
    assert torch.equal(_logits(base, ids), _logits(out, ids))
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] == (which == "tied") and config["vocab_size"] == emb.input.shape[0]
    assert (out / "generation_config.json").exists() and "tokensurgery" in (out / "README.md").read_text()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_sharded_write_loads(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["untied"]
    out = _rewrite_identity(base, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    ids = [5, 6, 7, 8]
    assert torch.equal(_logits(base, ids), _logits(out, ids))


def test_new_vocab_size_and_untie(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["tied"]
    emb = load_embeddings(base)
    n, h = emb.input.shape[0] + 7, emb.input.shape[1]
    new = NewEmbeddings(torch.randn(n, h), torch.randn(n, h))
    out = write_patched_checkpoint(base, tmp_path / "bigger", new, base, {"eos": 2}, "card")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape == (n, h)
    assert not model.config.tie_word_embeddings
    assert torch.allclose(model.get_output_embeddings().weight, new.output)


def test_refuses_existing_output_and_output_inside_input(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["tied"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    with pytest.raises(TokenSurgeryError, match="already exists"):
        _rewrite_identity(base, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep me"
    before = sorted(p.name for p in base.iterdir())
    with pytest.raises(TokenSurgeryError, match="inside"):
        _rewrite_identity(base, base / "sub")
    assert sorted(p.name for p in base.iterdir()) == before
    _rewrite_identity(base, tmp_path / "taken", force=True)
    assert not (tmp_path / "taken" / "x").exists() and (tmp_path / "taken" / "config.json").exists()


def test_atomic_folder_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_is_refused(tiny_model_dirs, tmp_path):
    with pytest.raises(TokenSurgeryError, match="expected"):
        write_patched_checkpoint(tiny_model_dirs["tied"], tmp_path / "o", NewEmbeddings(torch.zeros(10, 3)), tiny_model_dirs["tied"], {}, "")
    assert not (tmp_path / "o").exists()


def test_embeddings_only_path_for_unknown_architecture(tiny_model_dirs, tmp_path):
    """An architecture transformers cannot instantiate still has its embeddings found."""
    folder = tmp_path / "mystery"
    shutil.copytree(tiny_model_dirs["untied"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "mystery_lm", ["MysteryForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    assert embedding_names(folder) == ("model.embed_tokens.weight", "lm_head.weight")


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_standard_layout_names_agree_with_transformers(tiny_model_dirs, which):
    """The key-name fast path gives what transformers' own model says (tied: no output key)."""
    from tokensurgery.checkpoint import _names_of_standard_layout, _names_via_transformers, read_config, safetensors_files

    folder = tiny_model_dirs[which]
    keys = safetensors_files(folder)
    want = ("model.embed_tokens.weight", None if which == "tied" else "lm_head.weight")
    assert _names_via_transformers(folder, keys) == want
    assert _names_of_standard_layout(keys, read_config(folder)) == want == embedding_names(folder)
    assert _names_of_standard_layout(keys, {"architectures": ["LlavaForConditionalGeneration"]}) is None


def test_truncated_safetensors(tiny_model_dirs, tmp_path):
    folder = tmp_path / "trunc"
    shutil.copytree(tiny_model_dirs["tied"], folder)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(TokenSurgeryError, match="safetensors"):
        load_embeddings(folder)


# ---- the bundled models -------------------------------------------------------------------

@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_bundled_import_is_a_normal_checkpoint(which, smollm2_dir, gemma_dir):
    folder = {"smollm2": smollm2_dir, "gemma": gemma_dir}[which]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"]
    emb = load_embeddings(folder)
    assert emb.tied and emb.input.shape[0] == {"smollm2": 49152, "gemma": 262144}[which]
    model = load_model(folder)
    tok = hf_tokenizer(folder)
    prompt = "The capital of France is the city of"
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    words = text.split()
    assert words and sum(w.strip(".,;:!?'\"").isalpha() for w in words) >= len(words) - 1, text  # sane English
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert (logits > logits[paris]).sum() < 10  # " Paris" is among the top-10 next tokens


def test_smollm2_identity_rewrite_is_exact(smollm2_dir, tmp_path):
    out = _rewrite_identity(smollm2_dir, tmp_path / "smol")
    ids = [504, 3458, 282, 4649, 314]
    assert torch.equal(_logits(smollm2_dir, ids), _logits(out, ids))


def test_patched_config_nested_text_config():
    """Multimodal configs keep the language model's settings in `text_config`."""
    from tokensurgery.checkpoint import _patched_config

    config = {"model_type": "gemma3", "text_config": {"vocab_size": 262208, "hidden_size": 640}, "tie_word_embeddings": True}
    new = _patched_config(config, 49152, {"bos": None, "eos": 2, "pad": 2}, tied=False)
    assert new["text_config"]["vocab_size"] == 49152 and "vocab_size" not in new
    assert new["text_config"]["eos_token_id"] == 2 and new["tie_word_embeddings"] is False
    assert config["text_config"]["vocab_size"] == 262208  # the input dict is not modified


def test_model_card_names_the_hub_base_only_when_known(tmp_path):
    """The card's metadata goes through huggingface_hub: a bundled alias becomes its hub id,
    a hub id stays, a local folder gets no base_model (the hub rejects paths there)."""
    from huggingface_hub import ModelCard

    def base_of(spec):
        card = ModelCard(model_card("t", spec, {"base": spec}, "identity", {"k": 1}, quality="q", notes="n"))
        assert card.data.library_name == "transformers" and "tokensurgery" in card.data.tags
        assert "| k | 1 |" in card.text and "## Measured quality" in card.text and f"`{spec}`" in card.text
        return card.data.base_model

    assert base_of("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_of("gemma3-270m") == "google/gemma-3-270m"
    assert base_of("someone/some-model") == "someone/some-model"
    (tmp_path / "local").mkdir()
    assert base_of(str(tmp_path / "local")) is None


def test_saved_weights_are_readable_like_any_file(tmp_path):
    """safetensors 0.8 writes owner-only files (0600); what we save follows the umask like any file."""
    import os

    from tokensurgery.checkpoint import save_module

    umask = os.umask(0o022)
    try:
        save_module(torch.nn.Linear(2, 3), tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
