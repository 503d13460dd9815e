"""Segment kernels, the Byte2Word encoder and the hierarchical byte model on tiny settings."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from helpers import assert_torchrun_ok, corpus_lines, torchrun_cli
from tokensurgery.byte_models.trainable.hierarchical import EOW, Byte2Word, HierarchicalConfig, HierarchicalLM
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.kernels.segments import pack, per_length, positions_in_segment, segment_ids, segment_softmax, unpack

TINY = HierarchicalConfig(d_byte=32, d_model=48, byte_heads=4, encoder_layers=1, decoder_layers=1, max_word_bytes=12,
                          backbone={"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                    "intermediate_size": 96})


def test_segment_kernels():
    lengths = torch.tensor([2, 3, 1])
    assert segment_ids(lengths).tolist() == [0, 0, 1, 1, 1, 2]
    assert positions_in_segment(lengths).tolist() == [0, 1, 0, 1, 2, 0]
    scores = torch.randn(6, 3)
    p = segment_softmax(scores, segment_ids(lengths), 3)
    for s, (a, b) in enumerate([(0, 2), (2, 5), (5, 6)]):
        torch.testing.assert_close(p[a:b], torch.softmax(scores[a:b], 0))
    x = torch.randn(6, 4)
    packed, mask = pack(x, lengths)
    assert packed.shape == (3, 3, 4) and mask.sum() == 6 and torch.equal(unpack(packed, mask), x)


def test_byte2word_pooling_matches_a_per_word_loop():
    torch.manual_seed(0)
    enc = Byte2Word(16, 8, heads=2, layers=0, max_len=8).eval()
    words = [b"The", b" cat", b",", b" \xff\xfe"]
    data = torch.tensor(list(b"".join(words)))
    lengths = torch.tensor([len(w) for w in words])
    got = enc(data, lengths)
    for r, w in enumerate(words):  # reference: ordinary softmax attention over one word's bytes
        x = enc.byte(torch.tensor(list(w))) + enc.position(torch.arange(len(w)))
        k, v = enc.key(x).view(len(w), 2, 8), enc.value(x).view(len(w), 2, 8)
        att = torch.softmax((k * enc.query).sum(-1) / math.sqrt(8), 0)
        torch.testing.assert_close(got[r], enc.out((att.unsqueeze(-1) * v).sum(0).reshape(-1)))


def test_no_byte_sees_a_later_word_or_byte():
    torch.manual_seed(0)
    model = HierarchicalLM(TINY).eval()
    words = [b"The", b" cat", b" sat", b" on", b" it"]
    rows = [0]
    for w in words:  # forward's rows: each word's bytes, then its EOW
        rows.append(rows[-1] + len(w) + 1)
    base = model([words])
    assert base.shape == (rows[-1], 257)
    changed = list(words)
    changed[2] = b" sAt"
    after = model([changed])
    torch.testing.assert_close(after[: rows[2]], base[: rows[2]])  # earlier words: untouched
    # word 2 itself: rows up to the one predicting the changed byte (index 2 of " sat") are untouched
    torch.testing.assert_close(after[rows[2] : rows[2] + 3], base[rows[2] : rows[2] + 3])
    assert not torch.allclose(after[rows[2] + 3 : rows[3]], base[rows[2] + 3 : rows[3]])
    assert not torch.allclose(after[rows[3] : rows[4]], base[rows[3] : rows[4]])  # later words do see it


def test_words_grouped_by_length_equal_one_word_at_a_time():
    """The no-padding path (words stacked by length) gives what each word alone gives."""
    torch.manual_seed(0)
    model = HierarchicalLM(TINY).eval()
    words = [b"The", b" cat", b",", b" \xff\xfe", b" a", b" dog", b" sat", b"."]
    data, lengths = model._flat(words)
    h = torch.randn(len(words), TINY.d_model)
    enc = model.encoder(data, lengths)
    dec = model._decode(h, data, lengths)
    r = 0
    for j, w in enumerate(words):
        d1, l1 = model._flat([w])
        torch.testing.assert_close(enc[j], model.encoder(d1, l1)[0])
        torch.testing.assert_close(dec[r : r + len(w) + 1], model._decode(h[j : j + 1], d1, l1))
        r += len(w) + 1
    # and the grouping kernel against padding + a mask
    x = torch.randn(int(lengths.sum()), 5)
    got = per_length(lambda b: b.cumsum(1), x, lengths)
    packed, mask = pack(x, lengths)
    torch.testing.assert_close(got, unpack(packed.cumsum(1), mask))


def test_loss_decreases_on_a_tiny_corpus():
    torch.manual_seed(0)
    model = HierarchicalLM(TINY)
    words = model.words_of("\n".join(corpus_lines(20_000, langs=("en",))).encode())
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        starts = [rng.randrange(len(words) - 16) for _ in range(4)]
        loss, _ = model.loss([words[s : s + 16] for s in starts])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(257) * 0.9  # starts near uniform over 257 symbols
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10, losses


def test_save_load_and_generate(tmp_path):
    torch.manual_seed(0)
    model = HierarchicalLM(TINY).eval()
    batch = [[b"Hello", b",", b" world"], [b"a", b" b", b"c"]]
    folder = model.save_pretrained(tmp_path / "hat")
    again = HierarchicalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(again(batch), model(batch))
    a = model.generate(b"Hello wor", max_new_bytes=20, seed=1)
    assert a == again.generate(b"Hello wor", max_new_bytes=20, seed=1) and len(a) <= 20
    assert len(model.generate(b"", max_new_bytes=5, temperature=0)) <= 5
    with pytest.raises(TokenSurgeryError, match="same"):
        model([[b"a"], [b"a", b"b"]])
    with pytest.raises(TokenSurgeryError, match="not a saved"):
        HierarchicalLM.from_pretrained(tmp_path / "none")
    assert EOW == 256


def test_retrofit_a_subword_model(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = HierarchicalLM.from_subword(tiny_model_dirs["tied"], TINY)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["tied"])
    assert model.config.d_model == lm.config.hidden_size
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = [model.words_of(b"The old house stood on the hill, and the wind blew.")[:8]]
    first = model.distill_loss(batch).item()
    for _ in range(40):
        loss = model.distill_loss(batch) + model.loss(batch)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.distill_loss(batch).item() < 0.5 * first
    for k, v in model.backbone.state_dict().items():  # frozen: the pretrained backbone is untouched
        assert torch.equal(v, backbone_before[k]), k
    # stages: distill trains the encoder alone, decoder the decoder alone (context frozen)
    texts = [b"The old house stood on the hill.", b"And the wind blew over the fields."]
    for stage, trained, untouched in [("distill", "encoder", "decoder"), ("decoder", "decoder", "encoder")]:
        model.zero_grad(set_to_none=True)
        model.text_loss(texts, stage=stage)[0].backward()
        assert any(p.grad is not None for p in getattr(model, trained).parameters()), stage
        assert all(p.grad is None for p in getattr(model, untouched).parameters()), stage
        assert all(p.grad is None for p in model.backbone.parameters())
    with pytest.raises(TokenSurgeryError, match="unknown training stage"):
        model.text_loss(texts, stage="nope")
    with pytest.raises(TokenSurgeryError, match="from_subword"):
        HierarchicalLM(TINY).text_loss(texts, stage="distill")
    # a new retrofit's start vector is the subword model's BOS (or EOS) embedding
    fresh = HierarchicalLM.from_subword(tiny_model_dirs["tied"], TINY)
    role = next(r for r in ("bos", "eos") if r in fresh.subword_vocab.roles)
    torch.testing.assert_close(fresh.start.detach(), lm.get_input_embeddings().weight[fresh.subword_vocab.roles[role]].detach())
    # the targets are the subword model's own embeddings of each word's tokens
    w = b" house"
    ids = model.subword_vocab.decompose(w)
    torch.testing.assert_close(model.word_targets([w])[0], lm.get_input_embeddings().weight[ids].mean(0).detach())


def test_train_resume_flat_and_cli(tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import load_file

    from tokensurgery.byte_models.trainable.flat import FlatByteLM, FlatConfig
    from tokensurgery.byte_models.trainable.train import ByteTrainConfig, load_byte_model, train_bytes
    from tokensurgery.cli import cli
    from tokensurgery.corpus import Corpus

    corpus = Corpus([("en", "\n".join(corpus_lines(20_000, langs=("en",))))])
    cfg = ByteTrainConfig(steps=4, batch_size=2, context_bytes=80, lr=3e-3, lr_warmup=1, save_every=2)
    torch.manual_seed(0)
    straight = train_bytes(HierarchicalLM(TINY), corpus, tmp_path / "a", cfg, progress=False)
    torch.manual_seed(0)
    train_bytes(HierarchicalLM(TINY), corpus, tmp_path / "b", cfg, progress=False, until=2)
    resumed = train_bytes(None, corpus, tmp_path / "b", cfg, resume=True, progress=False)
    assert straight.steps_done == resumed.steps_done == 4
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert isinstance(load_byte_model(tmp_path / "a"), HierarchicalLM)
    flat = FlatByteLM(FlatConfig(d_model=32, backbone={"num_hidden_layers": 1, "num_attention_heads": 2,
                                                       "num_key_value_heads": 2, "intermediate_size": 64}))
    result = train_bytes(flat, corpus, tmp_path / "flat", cfg, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    again = load_byte_model(tmp_path / "flat")
    assert isinstance(again, FlatByteLM) and len(again.generate(b"The", max_new_bytes=6, temperature=0)) == 6
    r = CliRunner().invoke(cli, ["byte-model", "generate", str(tmp_path / "a"), "The old", "--max-new-bytes", "8"])
    assert r.exit_code == 0 and r.output.startswith("The old"), r.output
    r = CliRunner().invoke(cli, ["byte-model", "train", "flat", str(tmp_path / "x"), "--from-subword", "smollm2-135m"])
    assert r.exit_code == 2 and "hierarchical" in r.stderr
    # --init continues a saved model (e.g. the next retrofit stage) into a new OUT
    (tmp_path / "c.txt").write_text(corpus.texts[0][1])
    r = CliRunner().invoke(cli, ["byte-model", "train", "hierarchical", str(tmp_path / "c"), "--init", str(tmp_path / "a"),
                                 "--steps", "2", "--batch-size", "2", "--context-bytes", "64", "--corpus",
                                 str(tmp_path / "c.txt")])
    assert r.exit_code == 0, r.output
    assert load_file(tmp_path / "c" / "model.safetensors").keys() == a.keys()
    r = CliRunner().invoke(cli, ["byte-model", "train", "hierarchical", str(tmp_path / "a"), "--init", str(tmp_path / "a")])
    assert r.exit_code == 2 and "same folder" in r.stderr


def test_byte_model_torchrun_two_cpu_processes(tmp_path):
    import json

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(corpus_lines(20_000, langs=("en",))))
    out = tmp_path / "ddp"
    r = torchrun_cli(["byte-model", "train", "hierarchical", str(out), "--corpus", str(corpus), "--steps", "3",
                      "--batch-size", "2", "--context-bytes", "64", "--d-model", "64", "--layers", "1", "--d-byte", "32"])
    assert_torchrun_ok(r)
    summary = json.loads((out / "training.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 3  # ranks checked in sync by the trainer
    assert summary["corpus"] == [str(corpus)]


def test_delete_gate_hard_deletion_drops_positions_as_keys(tmp_path):
    """Hard deletion = the layers after the gate run on the kept positions alone (at their
    original positions); a gate that deletes nothing gives the plain model."""
    from tokensurgery.byte_models.trainable.flat import FlatByteLM, FlatConfig

    torch.manual_seed(0)
    model = FlatByteLM(FlatConfig(d_model=32, gate_layer=1, backbone={
        "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 64})).eval()
    x = torch.tensor([list(b"\x00The cat sat on the mat.")])
    x[0, 0] = 256
    with torch.no_grad():
        torch.nn.init.constant_(model.gate.proj.bias, -50.0)  # deletes nothing
        plain = model.lm(input_ids=x).logits
        torch.testing.assert_close(model.logits(x, hard=True)[0], plain)
        torch.testing.assert_close(model.logits(x, hard=False)[0], plain, atol=1e-5, rtol=1e-5)
        deleted = torch.zeros(x.shape, dtype=torch.bool)
        deleted[0, [2, 3, 5, 9, 10, 11, 17]] = True
        model.gate.forward = lambda h: deleted.float()  # this deletion pattern
        got, p = model.logits(x, hard=True)
        assert torch.equal(p, deleted.float())
        body = model.lm.model
        pos = torch.arange(x.shape[1]).unsqueeze(0)
        h = body.layers[0](body.embed_tokens(x), attention_mask=None, position_embeddings=body.rotary_emb(body.embed_tokens(x), pos),
                           position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
        kept = torch.nonzero(~deleted[0]).squeeze(1)
        hk, pk = h[:, kept], kept.unsqueeze(0)
        future = torch.full((len(kept), len(kept)), float("-inf")).triu(1).view(1, 1, len(kept), len(kept))
        for layer in body.layers[1:]:
            hk = layer(hk, attention_mask=future, position_embeddings=body.rotary_emb(hk, pk), position_ids=pk)
            hk = hk[0] if isinstance(hk, tuple) else hk
        torch.testing.assert_close(got[:, kept], model.lm.lm_head(body.norm(hk)), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, plain, atol=1e-3)


def test_delete_gate_learns_to_delete_and_saves(tmp_path):
    from tokensurgery.byte_models.trainable.score import score_bytes
    from tokensurgery.byte_models.trainable.flat import FlatByteLM, FlatConfig
    from tokensurgery.byte_models.trainable.train import ByteTrainConfig, load_byte_model, train_bytes
    from tokensurgery.corpus import Corpus

    torch.manual_seed(0)
    model = FlatByteLM(FlatConfig(d_model=32, gate_layer=1, gate_alpha=2.0, backbone={
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 64}))
    text = "\n".join(corpus_lines(20_000, langs=("en",)))
    before = score_bytes(model, text[:400].encode())
    assert before.positions_per_byte > 0.99  # the gate starts by keeping everything
    cfg = ByteTrainConfig(steps=40, batch_size=4, context_bytes=64, lr=1e-2, lr_warmup=1, save_every=100)
    result = train_bytes(model, Corpus([("en", text)]), tmp_path / "gate", cfg, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    after = score_bytes(model, text[:400].encode())
    assert after.positions_per_byte < 0.9, after  # a strong deletion reward made it delete
    again = load_byte_model(tmp_path / "gate")
    assert again.config.gate_layer == 1 and again.config.gate_alpha == 2.0
    assert score_bytes(again, text[:400].encode()) == after
    assert len(again.generate(b"The", max_new_bytes=4, temperature=0)) == 4
    with pytest.raises(TokenSurgeryError, match="gate_layer"):
        FlatByteLM(FlatConfig(d_model=32, gate_layer=2, backbone={"num_hidden_layers": 2, "num_attention_heads": 2,
                                                                   "num_key_value_heads": 2, "intermediate_size": 64}))


def test_retrofit_folder_is_self_describing_and_moves(tiny_model_dirs, tmp_path, capsys):
    """A saved retrofit has a config.json naming its class, and finds its subword model again
    after both folders move together (relative path) or when the subword model is gone (warning)."""
    import json
    import shutil

    sub = tmp_path / "place" / "subword"
    shutil.copytree(tiny_model_dirs["tied"], sub)
    model = HierarchicalLM.from_subword(sub, TINY)
    model.save_pretrained(tmp_path / "place" / "hat")
    meta = json.loads((tmp_path / "place" / "hat" / "config.json").read_text())
    assert meta["architectures"] == ["HierarchicalLM"] and meta["subword"]["relative"] == "../subword"
    shutil.move(tmp_path / "place", tmp_path / "moved")
    again = HierarchicalLM.from_pretrained(tmp_path / "moved" / "hat")
    assert Path(again.subword_source) == (tmp_path / "moved" / "subword").resolve()
    texts = [b"The old house stood on the hill."]
    again.text_loss(texts, stage="distill")  # distillation targets are there
    shutil.rmtree(tmp_path / "moved" / "subword")
    lost = HierarchicalLM.from_pretrained(tmp_path / "moved" / "hat")
    assert "is not found" in capsys.readouterr().err
    with pytest.raises(TokenSurgeryError, match="from_subword"):
        lost.text_loss(texts, stage="distill")


def test_byte_model_cli_delete_gate_and_eval(tmp_path):
    import json

    from click.testing import CliRunner

    from tokensurgery.byte_models.trainable.flat import FlatByteLM
    from tokensurgery.byte_models.trainable.train import load_byte_model
    from tokensurgery.cli import cli

    text = tmp_path / "c.txt"
    text.write_text("\n".join(corpus_lines(8_000, langs=("en",))))
    args = ["byte-model", "train", "flat", str(tmp_path / "g"), "--steps", "2", "--batch-size", "2", "--context-bytes",
            "64", "--corpus", str(text), "--d-model", "32", "--layers", "2"]
    r = CliRunner().invoke(cli, args + ["--delete-gate", "1"])
    assert r.exit_code == 0, r.output
    model = load_byte_model(tmp_path / "g")
    assert isinstance(model, FlatByteLM) and model.gate is not None and model.config.gate_layer == 1
    r = CliRunner().invoke(cli, args[:3] + [str(tmp_path / "h")] + args[4:] + ["--delete-gate", "2"])
    assert r.exit_code == 2 and "--delete-gate" in r.stderr
    r = CliRunner().invoke(cli, ["byte-model", "eval", str(tmp_path / "g"), "--text", str(text), "--max-bytes", "300",
                                 "--json", "-"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["results"][0]
    assert row["bytes"] == 300 and 0 < row["bits_per_byte"] < 20 and 0 < row["positions_per_byte"] <= 1
