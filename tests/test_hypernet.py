"""Hypernetworks on tiny models: pieces against the tokenizer's own encoder, FVT as the
residual start, the identity warm-up, save/load, exact resume, torchrun/DDP with 2 CPU
processes, apply and `transplant --method hypernet`."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from helpers import assert_torchrun_ok, corpus_lines, save_hf_tokenizer, torchrun_cli
from tokensurgery import VocabMap, open_vocabulary
from tokensurgery.checkpoint import load_embeddings
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.hypernets import (Corpus, Hypernet, PieceSplitter, TrainConfig, Trainer, UnigramSampler, apply,
                                    hypernet_for, predict_embeddings, train)
from tokensurgery.hypernets.pieces import N_FALLBACK

TINY_NET = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_pieces": 6}


def tiny_corpus() -> Corpus:
    return Corpus([("tiny", "\n".join(corpus_lines(40_000, langs=("en", "de"))))])


def tiny_config(**kw) -> TrainConfig:
    base = dict(steps=3, warmup_steps=2, batch_size=2, seq_len=24, vocab_size=1200, negatives=64, identity_batch=64,
                sampler_window=16, save_every=2, lr_warmup=1)
    base.update(kw)
    return TrainConfig(**base)


# ---- pieces -------------------------------------------------------------------------------

def test_pieces_are_the_base_tokenizers_own_split(tiny_model_dirs, tiny_tokenizers):
    base = open_vocabulary(tiny_model_dirs["tied"])
    tok = tiny_tokenizers["byte_level_bpe"]
    split = PieceSplitter(base, max_pieces=64)
    for word in [" hello", "hello", " Wörterbuch", " 12345", "ing", " naïve!", "\n\n", " 漢字"]:
        assert split(word.encode()) == tok.encode(word).ids, word  # the tokenizer's own encoder is the reference
        assert base.decode_bytes(split(word.encode())) == word.encode()
    assert len(PieceSplitter(base, max_pieces=2)(" Wörterbuch".encode())) == 2


def test_bytes_the_base_cannot_spell_become_fallback_pieces(tiny_tokenizers, tmp_path):
    save_hf_tokenizer(tiny_tokenizers["wordpiece"], tmp_path, {"unk": "[UNK]", "pad": "[PAD]"})
    base = open_vocabulary(tmp_path / "tokenizer.json")
    missing = base.missing_bytes
    assert missing, "the tiny WordPiece alphabet lacks some bytes"
    b = missing[0]
    split = PieceSplitter(base, max_pieces=16, n_rows=len(base) + 10)
    pieces = split(b"ab" + bytes([b]) + b"cd")
    assert len(base) + 10 + b in pieces  # fallback ids start after the embedding rows
    assert all(p < len(base) or p - len(base) - 10 < N_FALLBACK for p in pieces)


# ---- sampled tokenizers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sampler():
    s = UnigramSampler(size=1500, window=64)
    text = "\n".join(corpus_lines(30_000, langs=("en", "de")))
    for i in range(0, len(text), 500):
        s.add(text[i : i + 500])
    return s


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_sampled_tokenizer_round_trips_any_text(sampler, text):
    tok = sampler.sample()
    ids = tok.encode(text)
    assert b"".join(tok.surfaces[i] for i in ids) == text.encode()


def test_sampled_tokenizers_are_deterministic_and_sized(sampler):
    import random

    sampler.rng = random.Random(3)
    a = sampler.sample()
    sampler.rng = random.Random(3)
    b = sampler.sample()
    sampler.rng = random.Random(4)
    c = sampler.sample()
    assert a.pieces == b.pieces and a.pieces != c.pieces
    assert len(a) == 1500 + 1  # size pieces incl. 256 byte tokens, plus <unk>
    assert len(set(a.pieces)) == len(a.pieces)


# ---- the model ----------------------------------------------------------------------------

def test_residual_hypernet_starts_as_fvt_with_shapes_and_specials(tiny_model_dirs):
    base_dir, donor_dir = tiny_model_dirs["untied"], tiny_model_dirs["bos"]
    emb = load_embeddings(base_dir)
    net = hypernet_for(emb, **TINY_NET)
    vm = VocabMap.build(open_vocabulary(base_dir), open_vocabulary(donor_dir))
    new = predict_embeddings(net, vm, n_rows=len(vm.target) + 3, batch_size=100, progress=False)
    assert new.input.shape == (len(vm.target) + 3, emb.input.shape[1]) and new.output.shape == new.input.shape
    # untrained residual heads are zero: every text row is FVT, the mean of its pieces' base rows
    for t in vm.new_text[:50] + list(vm.shared)[:50]:
        pieces = vm.source.decompose(vm.target.surface[t])[: TINY_NET["max_pieces"]]
        torch.testing.assert_close(new.input[t], emb.input[pieces].float().mean(0))
        torch.testing.assert_close(new.output[t], emb.output[pieces].float().mean(0))
    for t, s in vm.specials.items():  # specials copy BASE's rows
        assert torch.equal(new.input[t], emb.input[s].float()) and torch.equal(new.output[t], emb.output[s].float())
    pad_rows = new.input[len(vm.target):]
    torch.testing.assert_close(pad_rows, emb.input.float().mean(0).expand_as(pad_rows))


def test_identity_warmup_is_exact_at_init_in_residual_form(tiny_model_dirs, tmp_path):
    """Why `--warmup-steps` defaults to 0 with --residual: nothing is left to learn."""
    trainer = Trainer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "net", tiny_config(), TINY_NET, progress=False)
    assert trainer.hypernet.config.residual
    out = trainer.identity_step(random.Random(0))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in trainer.hypernet.parameters())


def test_identity_warmup_reconstructs_single_piece_tokens(tiny_model_dirs, tmp_path):
    base_dir = tiny_model_dirs["tied"]
    cfg = tiny_config(steps=0, warmup_steps=150, identity_batch=256, lr=3e-3, lr_warmup=10, save_every=1000)
    trainer = Trainer(base_dir, tiny_corpus(), tmp_path / "net", cfg, {**TINY_NET, "residual": False}, progress=False)
    vocab, net = trainer.base_vocab, trainer.hypernet
    single = [i for i in trainer.identity_ids if trainer.splitter(vocab.surface[i]) == [i]]

    def rel_error():
        with torch.no_grad():
            pred, _ = net([[i] for i in single])
        target = net.base_input[single]
        return ((pred - target).norm(dim=1) / target.norm(dim=1)).mean().item()

    before = rel_error()
    trainer.run()
    after = rel_error()
    losses = [h["identity"] for h in trainer.history]
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])
    print("identity rel. error before, after:", before, after)
    assert after < 0.35 and after < 0.4 * before, (before, after)
    # statistics: predictions are scaled to the base embeddings' mean/std
    with torch.no_grad():
        pred, _ = net([[i] for i in single])
    torch.testing.assert_close(pred.std(0).mean(), net.base_input.std(0).mean(), rtol=0.3, atol=0)


# ---- saving, loading, resuming ---------------------------------------------------------------

def test_save_load_round_trip_and_wrong_base(tiny_model_dirs, tmp_path):
    emb = load_embeddings(tiny_model_dirs["tied"])
    net = hypernet_for(emb, **{**TINY_NET, "residual": False})
    pieces = [[5], [7, 9, 11], [300, 2]]
    folder = net.save_pretrained(tmp_path / "net")
    again = Hypernet.from_pretrained(folder, emb)
    for a, b in zip(net(pieces), again(pieces)):
        assert torch.equal(a, b)
    other = dataclasses.replace(emb, input=emb.input + 0.05)  # same shape, other weights
    with pytest.raises(TokenSurgeryError, match="not the embeddings"):
        Hypernet.from_pretrained(folder, other)
    with pytest.raises(TokenSurgeryError, match="tied base"):
        Hypernet.from_pretrained(folder, load_embeddings(tiny_model_dirs["untied"]))
    (folder / "hypernet.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenSurgeryError, match="corrupt"):
        Hypernet.from_pretrained(folder, emb)
    with pytest.raises(TokenSurgeryError, match="not a saved hypernetwork"):
        Hypernet.from_pretrained(tmp_path / "nothing", emb)


def test_resume_continues_exactly(tiny_model_dirs, tmp_path):
    base_dir = tiny_model_dirs["tied"]
    straight = train(base_dir, tiny_corpus(), tmp_path / "a", tiny_config(steps=4), TINY_NET, progress=False)
    assert straight.steps_done == 6 and all("lm" in h for h in straight.history[2:])
    cut = Trainer(base_dir, tiny_corpus(), tmp_path / "b", tiny_config(steps=4), TINY_NET, progress=False).run(until=3)
    assert cut.steps_done == 3  # interrupted after the first LM step
    resumed = train(base_dir, tiny_corpus(), tmp_path / "b", tiny_config(steps=4), resume=True, progress=False)
    assert resumed.steps_done == 6
    a, b = load_file(tmp_path / "a" / "hypernet.safetensors"), load_file(tmp_path / "b" / "hypernet.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [round(h["lm"], 4) for h in straight.history[3:]] == [round(h["lm"], 4) for h in resumed.history]
    with pytest.raises(TokenSurgeryError, match="already exists"):
        train(base_dir, tiny_corpus(), tmp_path / "a", tiny_config(), TINY_NET, progress=False)



def test_torchrun_two_cpu_processes(tiny_model_dirs, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(30_000, langs=("en", "fr"))))
    out = tmp_path / "ddp"
    r = torchrun_cli(["hypernet", "train", str(tiny_model_dirs["tied"]), str(out), "--corpus", str(corpus),
                      "--steps", "3", "--warmup-steps", "1", "--batch-size", "2", "--seq-len", "24", "--vocab-size",
                      "1200", "--negatives", "64", "--hypernet-layers", "1", "--max-pieces", "4"])
    assert_torchrun_ok(r)
    summary = json.loads((out / "training.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 4  # the trainer checks the ranks stayed in sync
    assert summary["corpus"] == [str(corpus)] and summary["corpus_chars"] == len(corpus.read_text())
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(h["loss"])) for h in log)
    Hypernet.from_pretrained(out, load_embeddings(tiny_model_dirs["tied"]))


# ---- apply --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_tiny(tiny_model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("hn") / "net"
    train(tiny_model_dirs["tied"], tiny_corpus(), out, tiny_config(steps=2, warmup_steps=1), TINY_NET, progress=False)
    return out


def test_apply_writes_a_checkpoint_transformers_loads(tiny_model_dirs, trained_tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    out = tmp_path / "patched"
    result = apply(trained_tiny, str(base), str(donor), out, batch_size=100, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    donor_vocab = open_vocabulary(donor)
    assert model.get_input_embeddings().weight.shape[0] == len(donor_vocab) == result.rows
    assert not model.config.tie_word_embeddings  # the output head unties the model
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(ids).logits).all()
    base_emb, new = load_embeddings(base), load_embeddings(out)
    for t, s in {**result.vocab_map.specials, **result.vocab_map.shared}.items():  # copied by default
        assert torch.equal(new.input[t], base_emb.input[s]) and torch.equal(new.output[t], base_emb.input[s])
    assert result.copied == len(result.vocab_map.specials) + len(result.vocab_map.shared)
    assert result.predicted == len(result.vocab_map.new_text)


def test_transplant_method_hypernet_copies_shared_rows(tiny_model_dirs, trained_tiny, tmp_path):
    from tokensurgery.transplant import TransplantOptions, transplant

    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    result = transplant(str(base), str(donor), tmp_path / "t", TransplantOptions(method="hypernet", hypernet=str(trained_tiny)),
                        progress=False)
    new, base_emb = load_embeddings(tmp_path / "t"), load_embeddings(base)
    net = Hypernet.from_pretrained(trained_tiny, base_emb)
    vm = result.vocab_map
    for t, s in list(vm.shared.items())[:20]:
        assert torch.equal(new.input[t], base_emb.input[s])
    t = vm.new_text[0]
    with torch.no_grad():
        expected, _ = net([PieceSplitter(vm.source, net.config.max_pieces)(vm.target.surface[t])])
    torch.testing.assert_close(new.input[t], expected[0])
    with pytest.raises(TokenSurgeryError, match="--hypernet"):
        TransplantOptions(method="hypernet").check()


def test_init_starts_from_a_saved_hypernetwork(tiny_model_dirs, trained_tiny, tmp_path):
    base_dir, weights = tiny_model_dirs["tied"], "hypernet.safetensors"
    saved = load_file(trained_tiny / weights)
    # no steps: the saved weights are the init's, its architecture (not the options given) included
    train(base_dir, tiny_corpus(), tmp_path / "zero", tiny_config(steps=0, warmup_steps=0, init=str(trained_tiny)),
          {"num_layers": 1}, progress=False)
    zero = load_file(tmp_path / "zero" / weights)
    assert zero.keys() == saved.keys() and all(torch.equal(zero[k], saved[k]) for k in saved)
    # one LM step moves on from there: its loss is the init's loss, not a fresh network's
    config = dict(steps=1, warmup_steps=0, lr=1e-6)
    init = train(base_dir, tiny_corpus(), tmp_path / "one", tiny_config(**config, init=str(trained_tiny)), progress=False)
    fresh = train(base_dir, tiny_corpus(), tmp_path / "fresh", tiny_config(**config), TINY_NET, progress=False)
    assert init.history[0]["lm"] != fresh.history[0]["lm"]
    assert json.loads((tmp_path / "one" / "training.json").read_text())["config"]["init"] == str(trained_tiny)
    with pytest.raises(TokenSurgeryError, match="tied base"):
        train(tiny_model_dirs["untied"], tiny_corpus(), tmp_path / "bad", tiny_config(init=str(trained_tiny)), progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(TokenSurgeryError, match="same folder"):
        train(base_dir, tiny_corpus(), trained_tiny, tiny_config(init=str(trained_tiny)), force=True, progress=False)
    assert load_file(trained_tiny / weights).keys() == saved.keys()


def test_training_windows_follow_mix(tiny_model_dirs, tmp_path):
    corpus = Corpus([("big", "a " * 20_000), ("small", "b " * 100)])
    for mix, lo, hi in (("chars", 0.0, 0.05), ("source", 0.35, 0.65)):
        trainer = Trainer(tiny_model_dirs["tied"], corpus, tmp_path / mix, tiny_config(batch_size=8, mix=mix), TINY_NET,
                          progress=False)
        texts = [t for step in range(20) for t in trainer.batch_texts(step, 0)]
        share = sum(t.strip().startswith("b") for t in texts) / len(texts)
        assert lo <= share <= hi, (mix, share)
    with pytest.raises(TokenSurgeryError, match="mix must be"):
        tiny_config(mix="words").check()


def test_cli_hypernet_train_apply_and_bad_input(tiny_model_dirs, trained_tiny, tmp_path):
    from click.testing import CliRunner

    from tokensurgery.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines(20_000, langs=("en",))))
    r = run("hypernet", "train", tiny_model_dirs["tied"], tmp_path / "net", "--corpus", corpus, "--steps", "1",
            "--warmup-steps", "1", "--batch-size", "2", "--seq-len", "16", "--vocab-size", "1000", "--negatives", "32",
            "--hypernet-layers", "1")
    assert r.exit_code == 0, r.output
    assert "2 steps" in r.output and (tmp_path / "net" / "hypernet.safetensors").exists()
    r = run("hypernet", "apply", tmp_path / "net", tiny_model_dirs["tied"], tiny_model_dirs["bos"], tmp_path / "out",
            "--eval-lang", "en", "--max-bytes", "500")
    assert r.exit_code == 0, r.output
    assert "bits/byte" in r.output
    # a hypernetwork for another base: one line, nothing written
    r = run("hypernet", "apply", tmp_path / "net", tiny_model_dirs["untied"], tiny_model_dirs["bos"], tmp_path / "bad")
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    r = run("hypernet", "train", tiny_model_dirs["tied"], tmp_path / "x", "--corpus", tmp_path / "missing.txt")
    assert r.exit_code == 2 and "corpus path not found" in r.stderr
    r = run("transplant", tiny_model_dirs["tied"], tiny_model_dirs["bos"], tmp_path / "y", "--method", "hypernet")
    assert r.exit_code == 2 and "--hypernet" in r.stderr, r.output


def test_apply_with_a_tekken_file(tiny_model_dirs, trained_tiny, tmp_path):
    from transformers import AutoTokenizer

    from helpers import site_file

    tekken = site_file("mistral_common", "data", "tekken_240911.json")
    out = tmp_path / "tekken"
    result = apply(trained_tiny, str(tiny_model_dirs["tied"]), tekken, out, progress=False)
    vocab = open_vocabulary(tekken)
    assert result.rows == len(vocab) and load_embeddings(out).input.shape[0] == len(vocab)
    text = "Größe, naïve café: 12345 漢字!"
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == vocab.encode(text)
