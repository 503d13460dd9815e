"""Tokenizer transplantation on tiny models (against scikit-learn and brute-force references)
and end to end on the light bundled pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import orthogonal_mp_gram
from sklearn.neighbors import NearestNeighbors

from tokensurgery import VocabMap, open_vocabulary
from tokensurgery.inputs import hf_tokenizer
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.transplant import TransplantOptions, transplant


def weights(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def capped(rows: np.ndarray, base: torch.Tensor) -> np.ndarray:
    """The transplant's guard: rows longer than BASE's longest row are scaled down to it."""
    limit = base.double().norm(dim=1).max().item()
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.where(norms > limit, rows * limit / norms, rows)


def pair(base, donor):
    return VocabMap.build(open_vocabulary(base), open_vocabulary(donor))


def test_identity_transplant_gives_the_base_back(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["untied"]
    out = tmp_path / "same"
    result = transplant(str(base), str(base), out, TransplantOptions(k=8), progress=False)
    assert result.filled == [] and result.errors is None
    a, b = weights(base), weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert hf_tokenizer(out)("hello world")["input_ids"] == hf_tokenizer(base)("hello world")["input_ids"]


def test_omp_rows_match_sklearn_and_shared_rows_are_copied(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    out = tmp_path / "omp"
    k = 6
    result = transplant(str(base), str(donor), out, TransplantOptions(k=k, candidates=None, dtype="float64", fvt_above=None, ridge=0.0, blend=False, affine=False), progress=False)
    vm = result.vocab_map
    new = load_embeddings(out)
    B, D = load_embeddings(base).input.double(), load_embeddings(donor).input.double()
    assert new.tied and new.input.shape[0] == D.shape[0]
    for t, s in {**vm.shared, **vm.specials}.items():
        assert torch.equal(new.input[t], B[s].float())
    pairs = sorted(vm.shared.items())
    atoms_donor = D[[t for t, _ in pairs]].numpy()
    atoms_base = B[[s for _, s in pairs]].numpy()
    filled = result.filled
    coef = orthogonal_mp_gram(atoms_donor @ atoms_donor.T, atoms_donor @ D[filled].numpy().T, n_nonzero_coefs=k).T
    want = capped(coef @ atoms_base, B)
    assert result.capped == int((np.abs(want - coef @ atoms_base).max(1) > 0).sum())
    np.testing.assert_allclose(new.input[filled].double().numpy(), want, atol=1e-5, rtol=1e-4)
    recon = coef @ atoms_donor
    err = np.linalg.norm(D[filled].numpy() - recon, axis=1) / np.linalg.norm(D[filled].numpy(), axis=1)
    np.testing.assert_allclose(result.errors.numpy(), err, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "omp" in card and f"| k | {k} |" in card and "reconstruction error" in card


def test_affine_omp_rows_fill_the_coefficient_shortfall_with_the_mean_row(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    k = 6
    opts = TransplantOptions(k=k, candidates=None, dtype="float64", ridge=0.0, blend=False, affine=True)
    result = transplant(str(base), str(donor), tmp_path / "affine", opts, progress=False)
    vm, filled = result.vocab_map, result.filled
    B, D = load_embeddings(base).input.double(), load_embeddings(donor).input.double()
    pairs = sorted(vm.shared.items())
    atoms_donor, atoms_base = D[[t for t, _ in pairs]].numpy(), B[[s for _, s in pairs]].numpy()
    coef = orthogonal_mp_gram(atoms_donor @ atoms_donor.T, atoms_donor @ D[filled].numpy().T, n_nonzero_coefs=k).T
    mean = B[sorted(set(vm.shared.values()))].numpy().mean(0)
    assert np.abs(1 - coef.sum(1)).max() > 0.05  # the shortfall is not trivially zero here
    want = capped(coef @ atoms_base + (1 - coef.sum(1, keepdims=True)) * mean, B)
    np.testing.assert_allclose(load_embeddings(tmp_path / "affine").input[filled].double().numpy(), want, atol=1e-5, rtol=1e-4)


def test_affine_combination_keeps_a_constant_dimension_whatever_the_coefficients_sum_to():
    from tokensurgery.transplant import _combine
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(50, 8, generator=g)
    atoms[:, 3] = 0.145  # a bias-like dimension: the same in every BASE row
    weights, indices = torch.rand(20, 5, generator=g) * 0.4, torch.randint(0, 50, (20, 5), generator=g)
    plain = _combine(weights, indices, atoms, atoms.mean(0), affine=False)
    rows = _combine(weights, indices, atoms, atoms.mean(0), affine=True)
    assert not torch.allclose(plain[:, 3], torch.full((20,), 0.145))
    torch.testing.assert_close(rows[:, 3], torch.full((20,), 0.145))
    torch.testing.assert_close(rows - plain, (1 - weights.sum(1, keepdim=True)) * atoms.mean(0))


def test_fvt_fallback_replaces_poorly_reconstructed_text_tokens(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    plain = transplant(str(base), str(donor), tmp_path / "plain", TransplantOptions(k=3, fvt_above=None, ridge=0.0, blend=False), progress=False)
    mixed = transplant(str(base), str(donor), tmp_path / "mixed", TransplantOptions(k=3, fvt_above=0.7, ridge=0.0, blend=False), progress=False)
    fvt = transplant(str(base), str(donor), tmp_path / "fvt", TransplantOptions(method="fvt"), progress=False)
    rows = {name: load_embeddings(tmp_path / name).input for name in ("plain", "mixed", "fvt")}
    text = set(plain.vocab_map.new_text)
    swapped = [t for t, e in zip(plain.filled, plain.errors.tolist()) if e > 0.7 and t in text]
    kept = [t for t, e in zip(plain.filled, plain.errors.tolist()) if e <= 0.7 or t not in text]
    assert swapped and kept and mixed.fvt_fallbacks == len(swapped)
    assert torch.equal(rows["mixed"][swapped], rows["fvt"][swapped])
    assert torch.equal(rows["mixed"][kept], rows["plain"][kept])


def test_untied_base_gets_both_matrices_from_one_solve_of_a_tied_donor(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["untied"], tiny_model_dirs["bos"]
    out = tmp_path / "untied"
    result = transplant(str(base), str(donor), out, TransplantOptions(k=5, candidates=None, dtype="float64", fvt_above=None, ridge=0.0, blend=False, affine=False), progress=False)
    vm, new, old = result.vocab_map, load_embeddings(out), load_embeddings(base)
    assert not new.tied and new.output.shape == new.input.shape
    for t, s in vm.shared.items():
        assert torch.equal(new.output[t], old.output[s])
    pairs = sorted(vm.shared.items())
    D = load_embeddings(donor).input.double()
    atoms = D[[t for t, _ in pairs]].numpy()
    coef = orthogonal_mp_gram(atoms @ atoms.T, atoms @ D[result.filled].numpy().T, n_nonzero_coefs=5).T
    want = capped(coef @ old.output.double()[[s for _, s in pairs]].numpy(), old.output)
    np.testing.assert_allclose(new.output[result.filled].double().numpy(), want, atol=1e-5, rtol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == new.input.shape[0]


def test_fvt_rows_are_per_token_means_in_any_block_size(tiny_model_dirs):
    """The blocked index_add_ sum gives each new token the mean of its pieces' rows (the
    mean row where it has none, and for ids that are not new text), whatever the block."""
    from tokensurgery.transplant import _fvt_rows

    vm = pair(tiny_model_dirs["tied"], tiny_model_dirs["bos"])
    B = load_embeddings(tiny_model_dirs["tied"]).input.float()
    mean = B.mean(0)
    ids = [*vm.new_text, *sorted(vm.shared)[:3]]
    want = torch.stack([B[p].mean(0) if t in vm.new_text and (p := vm.decompose(t)) else mean for t in ids])
    for block in (1, 3, 16384):
        got = _fvt_rows(vm, ids, B, mean, False, block=block)
        assert torch.allclose(got, want, atol=1e-6), block


def test_baselines_against_independent_references(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    vm = pair(base, donor)
    B = load_embeddings(base).input
    D = load_embeddings(donor).input
    shared_base = sorted(set(vm.shared.values()))
    mean = B[shared_base].mean(0)
    rows = {}
    for method in ("zero", "mean", "fvt", "knn"):
        out = tmp_path / method
        result = transplant(str(base), str(donor), out, TransplantOptions(method=method, k=4), progress=False)
        rows[method] = load_embeddings(out).input
        filled = result.filled
    assert torch.count_nonzero(rows["zero"][filled]) == 0
    assert torch.allclose(rows["mean"][filled], mean.expand(len(filled), -1), atol=1e-6)
    # FVT: the base tokenizer's own encoding of each new token's text, mean of those rows
    tok = hf_tokenizer(base)
    checked = 0
    for t in vm.new_text:
        text = vm.target.surface[t].decode("utf-8", errors="strict") if vm.target.surface[t].isascii() else None
        if not text or not text.startswith(" ") or len(text) < 3:
            continue
        ids = tok("x" + text, add_special_tokens=False)["input_ids"][1:]  # mid-text, as after a word
        if tok.decode(ids) != text:
            continue
        assert torch.allclose(rows["fvt"][t], B[ids].mean(0), atol=1e-6), (text, ids)
        checked += 1
    assert checked >= 10
    # knn: scikit-learn's nearest neighbours in the donor space, inverse-distance weights
    pairs = sorted(vm.shared.items())
    atoms = D[[t for t, _ in pairs]].double().numpy()
    dist, idx = NearestNeighbors(n_neighbors=4).fit(atoms).kneighbors(D[filled].double().numpy())
    w = 1 / (dist + 1e-6)
    w /= w.sum(1, keepdims=True)
    want = np.einsum("bk,bkd->bd", w, B[[s for _, s in pairs]].double().numpy()[idx])
    np.testing.assert_allclose(rows["knn"][filled].double().numpy(), want, atol=1e-4)


def test_specials_by_role_and_content_and_bos_configured(tiny_model_dirs, tmp_path):
    """Base adds <s> (SentencePiece, like Gemma-3); the donor's byte-level tokenizer adds
    nothing: the output tokenizer must put the donor's BOS token first."""
    base, donor = tiny_model_dirs["bos"], tiny_model_dirs["tied"]
    vm = pair(base, donor)
    t = vm.target
    assert vm.special_how[t.roles["bos"]] == "role:bos"
    chat = [i for i, tok in enumerate(t.tokens) if tok in ("<|im_start|>", "<|im_end|>")]
    assert chat and all(vm.special_how[i] == "content" for i in chat)
    out = tmp_path / "bos"
    result = transplant(str(base), str(donor), out, TransplantOptions(k=4), progress=False)
    assert any("adds '<s>'" in n for n in result.notes)
    tok = hf_tokenizer(out)
    ids = tok("hello world")["input_ids"]
    assert ids[0] == t.roles["bos"] and ids[1:] == hf_tokenizer(donor)("hello world")["input_ids"]
    new, old = load_embeddings(out).input, load_embeddings(base).input
    assert torch.equal(new[t.roles["bos"]], old[vm.source.roles["bos"]])
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] == t.roles["bos"] and config["eos_token_id"] == t.roles["eos"]


def test_tokenizer_only_donor_for_fvt(tiny_model_dirs, tmp_path):
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    for f in tiny_model_dirs["bos"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (tok_only / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "fvt"
    result = transplant(str(tiny_model_dirs["tied"]), str(tok_only), out, TransplantOptions(method="fvt"), progress=False)
    assert load_embeddings(out).input.shape[0] == len(result.vocab_map.target)
    with pytest.raises(TokenSurgeryError, match="has no weights"):
        transplant(str(tiny_model_dirs["tied"]), str(tok_only), tmp_path / "omp", TransplantOptions(k=4), progress=False)
    assert not (tmp_path / "omp").exists()


def test_bad_inputs(tiny_model_dirs, tmp_path):
    base, donor = str(tiny_model_dirs["tied"]), str(tiny_model_dirs["bos"])
    with pytest.raises(TokenSurgeryError, match="larger than the dictionary allows"):
        transplant(base, donor, tmp_path / "k", TransplantOptions(k=33), progress=False)
    with pytest.raises(TokenSurgeryError, match="unknown method"):
        transplant(base, donor, tmp_path / "m", TransplantOptions(method="magic"), progress=False)
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("keep")
    with pytest.raises(TokenSurgeryError, match="already exists"):
        transplant(base, donor, tmp_path / "exists", TransplantOptions(k=4), progress=False)
    assert (tmp_path / "exists" / "x").read_text() == "keep"
    assert not (tmp_path / "k").exists() and not (tmp_path / "m").exists()


def test_non_finite_and_short_embeddings_are_refused(tiny_model_dirs, tmp_path):
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "nan"
    shutil.copytree(tiny_model_dirs["bos"], bad)
    f = next(bad.glob("*.safetensors"))
    w = load_file(f)
    name = load_embeddings(bad).input_name
    w[name][5, 0] = float("nan")
    save_file(w, f, metadata={"format": "pt"})
    with pytest.raises(TokenSurgeryError, match="NaN or infinite"):
        transplant(str(tiny_model_dirs["tied"]), str(bad), tmp_path / "o1", TransplantOptions(k=4), progress=False)
    short = tmp_path / "short"
    shutil.copytree(tiny_model_dirs["tied"], short)
    f = next(short.glob("*.safetensors"))
    w = load_file(f)
    w[name] = w[name][:100].clone()
    save_file(w, f, metadata={"format": "pt"})
    with pytest.raises(TokenSurgeryError, match="rows but the tokenizer has"):
        transplant(str(short), str(tiny_model_dirs["bos"]), tmp_path / "o2", TransplantOptions(k=4), progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_no_shared_tokens(tiny_model_dirs, tiny_tokenizers, tmp_path):
    """A donor whose every text token is absent from the base: refused, nothing written."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from helpers import make_tiny_model

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, "\u00e6\u00f8": 4, "\u00e5\u00e6": 5}
    tok = Tokenizer(models.BPE(vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    donor = tmp_path / "odd"
    donor.mkdir()
    make_tiny_model(donor, tok)
    with pytest.raises(TokenSurgeryError, match="share no text tokens"):
        transplant(str(tiny_model_dirs["tied"]), str(donor), tmp_path / "o", TransplantOptions(k=2), progress=False)


@pytest.mark.real
def test_light_pair_end_to_end(gemma_dir, smollm2_dir, tmp_path):
    """SmolLM2's tokenizer onto Gemma-3-270M with screened OMP; plain transformers loads the
    result, shared rows are Gemma's own, and greedy text continues in English words."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "light"
    result = transplant(str(gemma_dir), str(smollm2_dir), out, TransplantOptions(k=64, candidates=128), progress=False)
    assert len(result.filled) == len(result.vocab_map.target) - len(result.vocab_map.shared) - len(result.vocab_map.specials)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = hf_tokenizer(out)
    ids = tok("The capital of France is", return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == result.vocab_map.target.roles["bos"]  # Gemma-3 keeps its BOS
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    words = [w.strip(".,;:!?\"'") for w in text.split()]
    assert sum(w.isalpha() and w.isascii() for w in words) >= 4, text
    old = load_embeddings(gemma_dir).input
    new = load_embeddings(out).input
    t, s = next(iter(result.vocab_map.shared.items()))
    assert torch.equal(new[t], old[s])


def _temp_tokenizer_folders():
    import tempfile
    from pathlib import Path

    return sorted(Path(tempfile.gettempdir()).glob("tokensurgery-tok-*"))


def test_tokenizer_file_donors_for_methods_without_donor_weights(tiny_model_dirs, tmp_path):
    """fvt takes the donor as a model folder, a tokenizer file under any name, or a SentencePiece
    .model (converted); the same donor gives the same rows, the written tokenizer encodes like
    the donor, no temporary folder is left, and omp asks for weights."""
    from helpers import site_file

    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    loose = tmp_path / "my-tokenizer.json"
    loose.write_bytes((donor / "tokenizer.json").read_bytes())
    before = _temp_tokenizer_folders()
    opts = TransplantOptions(method="fvt")
    transplant(str(base), str(donor), tmp_path / "from-folder", opts, progress=False)
    transplant(str(base), str(loose), tmp_path / "from-file", opts, progress=False)
    assert torch.equal(load_embeddings(tmp_path / "from-folder").input, load_embeddings(tmp_path / "from-file").input)
    text = "The quick brown fox, 1234 times."
    assert hf_tokenizer(tmp_path / "from-file")(text)["input_ids"] == hf_tokenizer(donor)(text)["input_ids"]
    sp = site_file("mistral_common", "data", "mistral_instruct_tokenizer_240323.model.v3")
    result = transplant(str(base), str(sp), tmp_path / "from-model", opts, progress=False)
    vocab = open_vocabulary(sp)
    assert result.n_rows == len(vocab) and load_embeddings(tmp_path / "from-model").input.shape[0] == len(vocab)
    written = hf_tokenizer(tmp_path / "from-model")(text, add_special_tokens=False)["input_ids"]
    assert written == vocab.encode(text)
    assert _temp_tokenizer_folders() == before
    with pytest.raises(TokenSurgeryError, match="has no weights"):
        transplant(str(base), str(loose), tmp_path / "omp", TransplantOptions(), progress=False)
    assert not (tmp_path / "omp").exists() and _temp_tokenizer_folders() == before
