"""Healing: chunk alignment against a brute-force walk, the ALM loss against its formula,
training steps on tiny models (loss goes down, only the chosen rows move, resume is exact,
LoRA merges, torchrun), the written checkpoint, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from helpers import assert_torchrun_ok, corpus_lines, torchrun_cli
from tokensurgery.alignment import align, cut_to_fit, token_ends
from tokensurgery.cli import cli
from tokensurgery.corpus import Corpus
from tokensurgery.errors import TokenSurgeryError
from tokensurgery.heal import HealConfig, Healer, binary_kl, heal
from tokensurgery.inputs import vocabulary_of_folder
from tokensurgery.vocab_map import VocabMap


# ---- alignment ------------------------------------------------------------------------------

def _walk_chunks(lens_a: list[int], lens_b: list[int]) -> tuple[list[int], list[int]]:
    """Reference: consume tokens from whichever side is behind; a chunk closes whenever both
    sides have consumed the same number of bytes (token lengths are positive here)."""
    ca, cb, i, j, pa, pb, chunk = [], [], 0, 0, 0, 0, 0
    while i < len(lens_a) or j < len(lens_b):
        if pa <= pb and i < len(lens_a):
            pa += lens_a[i]
            ca.append(chunk)
            i += 1
        else:
            pb += lens_b[j]
            cb.append(chunk)
            j += 1
        if pa == pb:
            chunk += 1
    return ca, cb


def _cuts(draw_list: list[int], n: int) -> list[int]:
    cuts = sorted(set(c for c in draw_list if 0 < c < n)) + [n]
    return [b - a for a, b in zip([0] + cuts[:-1], cuts)]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 60), st.lists(st.integers(0, 60), max_size=40), st.lists(st.integers(0, 60), max_size=40))
def test_alignment_equals_a_brute_force_walk(n, cuts_a, cuts_b):
    lens_a, lens_b = _cuts(cuts_a, n), _cuts(cuts_b, n)
    ends_a = [sum(lens_a[: i + 1]) for i in range(len(lens_a))]
    ends_b = [sum(lens_b[: i + 1]) for i in range(len(lens_b))]
    a = align(ends_a, ends_b)
    ref_a, ref_b = _walk_chunks(lens_a, lens_b)
    assert a.chunk_a.tolist() == ref_a and a.chunk_b.tolist() == ref_b
    assert a.n_chunks == max(ref_a) + 1
    # the chunks' byte spans agree on both sides
    for c in range(a.n_chunks):
        assert sum(lens_a[i] for i in range(len(lens_a)) if ref_a[i] == c) == \
               sum(lens_b[j] for j in range(len(lens_b)) if ref_b[j] == c)


def test_cut_to_fit_and_real_tokenizers(smollm2_vocab, gemma_vocab):
    text = "Die Hauptstadt von Deutschland ist Berlin. Привет, мир! 東京は日本の首都です。 x = f(y) + 1"
    data = text.encode()
    s, g = smollm2_vocab.encode(text), gemma_vocab.encode(text)
    es, eg = token_ends(smollm2_vocab, s, data), token_ends(gemma_vocab, g, data)
    a = align(es, eg)
    for c in range(a.n_chunks):  # every chunk spells the same bytes in both tokenizations
        assert smollm2_vocab.decode_bytes([t for t, k in zip(s, a.chunk_a.tolist()) if k == c]) == \
               gemma_vocab.decode_bytes([t for t, k in zip(g, a.chunk_b.tolist()) if k == c])
    cut = cut_to_fit(es, eg, 10, 10)
    assert 0 < cut and cut in es and cut in eg
    assert sum(e <= cut for e in es) <= 10 and sum(e <= cut for e in eg) <= 10
    assert not any(cut < e <= es[9] and e in eg for e in es)  # the largest such boundary
    with pytest.raises(TokenSurgeryError, match="does not spell"):
        token_ends(smollm2_vocab, s[:-1], data)


def test_binary_kl_matches_its_formula():
    torch.manual_seed(0)
    lp, lq = -torch.rand(200, dtype=torch.float64) * 12, -torch.rand(200, dtype=torch.float64) * 12
    p, q = lp.exp(), lq.exp()
    ref = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    torch.testing.assert_close(binary_kl(lp, lq), ref, rtol=1e-9, atol=1e-12)
    assert binary_kl(lp, lp).abs().max() < 1e-12


# ---- training on tiny models ----------------------------------------------------------------

def tiny_corpus() -> Corpus:
    return Corpus([("en", "\n".join(corpus_lines(20_000, langs=("en",)))), ("fr", "\n".join(corpus_lines(20_000, langs=("fr",))))])


def tiny_config(**kw) -> HealConfig:
    base = dict(steps=3, batch_size=2, seq_len=24, lr=3e-3, lr_warmup=1, save_every=2, loss="alm", train="embeddings")
    return HealConfig(**{**base, **kw})


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_one_alm_step_lowers_the_loss(tiny_model_dirs, tmp_path):
    h = Healer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "o", tiny_config(steps=1, lr=1e-2, lr_warmup=1),
               teacher=tiny_model_dirs["bos"], progress=False)
    before = float(h.loss(0, 0)["loss"].detach())
    h.loop.run(h.loss)
    after = float(h.loss(0, 0)["loss"].detach())  # the same batch (the data stream is seeded by step)
    assert after < 0.98 * before, (before, after)


def test_teacher_identical_to_student_gives_zero_alm_and_kd(tiny_model_dirs, tmp_path):
    same = tiny_model_dirs["tied"]
    h = Healer(same, tiny_corpus(), tmp_path / "o", tiny_config(loss="alm+kd"), teacher=same, progress=False)
    parts = h.loss(0, 0)
    assert float(parts["alm"]) < 1e-7 and float(parts["kd"]) < 1e-6 and float(parts["lm"]) > 1.0
    other = Healer(same, tiny_corpus(), tmp_path / "p", tiny_config(loss="alm+kd"), teacher=tiny_model_dirs["bos"],
                   progress=False).loss(0, 0)
    assert float(other["alm"]) > 1e-5 and float(other["kd"]) > 1e-3


def test_shared_kl_equals_renormalised_softmax_by_hand():
    from tokensurgery.heal import shared_kl

    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(5, 30, generator=g) * 3, torch.randn(5, 50, generator=g) * 3
    s_cols, t_cols = torch.tensor([3, 0, 17, 29, 8]), torch.tensor([41, 2, 9, 0, 33])
    for i in range(5):  # each position: probabilities over the whole vocabulary, cut to the shared set
        ps, pt = s_logits[i].softmax(-1)[s_cols], t_logits[i].softmax(-1)[t_cols]
        ps, pt = ps / ps.sum(), pt / pt.sum()
        want = float((pt * (pt / ps).log()).sum())
        assert abs(float(shared_kl(s_logits[i : i + 1], t_logits[i : i + 1], s_cols, t_cols)[0]) - want) < 1e-5


def test_kd_with_the_shared_rows_head_equals_kd_with_full_teacher_logits(tiny_model_dirs, tmp_path):
    student, teacher = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    kd = Healer(student, tiny_corpus(), tmp_path / "o", tiny_config(loss="kd"), teacher=teacher, progress=False)
    assert kd.teacher_head is not None and kd.student_head is not None  # kd alone: shared columns only
    full = Healer(student, tiny_corpus(), tmp_path / "p", tiny_config(loss="alm+kd"), teacher=teacher, progress=False)
    assert full.teacher_head is None and full.student_head is None
    for step in range(3):
        a, b = float(kd.loss(step, 0)["kd"]), float(full.loss(step, 0)["kd"])
        assert a > 1e-3 and abs(a - b) < 1e-5 * max(1.0, b), (step, a, b)
    # the teacher's own head is back after each step
    assert kd.teacher.get_output_embeddings().weight.shape[0] == len(vocabulary_of_folder(teacher))


def test_kd_step_lowers_the_loss(tiny_model_dirs, tmp_path):
    h = Healer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "o", tiny_config(steps=1, loss="kd", lr=1e-2),
               teacher=tiny_model_dirs["bos"], progress=False)
    before = float(h.loss(0, 0)["loss"].detach())
    h.loop.run(h.loss)
    assert float(h.loss(0, 0)["loss"].detach()) < 0.98 * before


def test_cli_offers_every_loss():
    from tokensurgery.cli import heal as heal_cli
    from tokensurgery.heal import LOSSES

    assert heal_cli.LOSSES == LOSSES


def test_cli_offers_every_trainable_set():
    from tokensurgery.cli import heal as heal_cli
    from tokensurgery.heal import TRAINABLE

    assert heal_cli.TRAINABLE == TRAINABLE


@pytest.mark.parametrize("kind", ["tied", "bos"])  # no BOS (first id unscored) and BOS
def test_token_logprobs_of_a_padded_batch_equal_one_forward_per_row(tiny_model_dirs, kind):
    from tokensurgery.evaluate import load_model
    from tokensurgery.heal import next_token_logits, token_logprobs

    model, vocab = load_model(tiny_model_dirs[kind]), vocabulary_of_folder(tiny_model_dirs[kind])
    rows = [vocab.encode(t) for t in ("the cat sat on the mat", "a", "", "bonjour tout le monde, ça va ?")]
    with torch.no_grad():
        logits, shift = next_token_logits(model, vocab, rows)
        got = token_logprobs(logits, shift, rows)
        for row, lp in zip(rows, got):
            seq = ([vocab.bos_added] if vocab.bos_added is not None else []) + row
            assert len(lp) == max(len(row), shift)
            if len(seq) < 2:
                assert lp.isnan().all()
                continue
            ref = model(input_ids=torch.tensor([seq])).logits[0, :-1].log_softmax(-1)  # alone, unpadded
            want = ref.gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
            assert lp[:shift].isnan().all()
            torch.testing.assert_close(lp[shift:], want, atol=1e-5, rtol=1e-5)


def test_bfloat16_autocast_changes_the_step_loss_only_by_rounding(tiny_model_dirs, tmp_path):
    from tokensurgery.heal import autocast_dtype

    assert autocast_dtype("off", "cpu") is None and autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    losses = {}
    for setting in ("off", "bfloat16"):
        h = Healer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / setting, tiny_config(loss="lm", autocast=setting),
                   teacher=tiny_model_dirs["bos"], progress=False)
        losses[setting] = float(h.loss(0, 0)["loss"])
    assert losses["off"] != losses["bfloat16"]  # the products did run in bfloat16
    assert abs(losses["off"] - losses["bfloat16"]) < 0.02 * losses["off"], losses
    with pytest.raises(TokenSurgeryError, match="autocast"):
        tiny_config(autocast="fp8").check()


def test_lm_step_lowers_the_loss_without_teacher(tiny_model_dirs, tmp_path):
    h = Healer(tiny_model_dirs["tied"], tiny_corpus(), tmp_path / "o", tiny_config(steps=1, loss="lm", lr=1e-2),
               progress=False)
    before = float(h.loss(0, 0)["loss"].detach())
    h.loop.run(h.loss)
    assert float(h.loss(0, 0)["loss"].detach()) < before - 0.02  # nats per token, same batch


def test_train_new_moves_only_new_rows_and_writes_a_loadable_checkpoint(tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    student, teacher = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    res = heal(student, tmp_path / "o", tiny_corpus(), tiny_config(train="new"), teacher=teacher,
               eval_files=[], progress=False)
    new = VocabMap.build(vocabulary_of_folder(teacher), vocabulary_of_folder(student)).new  # tokens the teacher lacks
    old_w, new_w = _weights(student), _weights(tmp_path / "o")
    emb = "model.embed_tokens.weight"
    changed = (old_w[emb] != new_w[emb]).any(1).nonzero().squeeze(1).tolist()
    assert changed and set(changed) <= set(new)  # only rows of tokens the teacher lacks moved
    assert all(torch.equal(old_w[k], new_w[k]) for k in old_w if k != emb)
    record = json.loads((tmp_path / "o" / "training.json").read_text())
    assert record["tensors_written"] == [emb] and record["steps_done"] == 3 == res.steps_done
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(), new_w[emb])
    assert "## Healing" in (tmp_path / "o" / "README.md").read_text()
    assert set(old_w) == set(new_w)


def test_new_plus_bytes_adds_the_rows_the_teacher_has_as_byte_fallback_tokens(smollm2_vocab, gemma_vocab):
    import re

    from tokensurgery.heal import trainable_rows

    vm = VocabMap.build(gemma_vocab, smollm2_vocab)  # teacher Gemma-3 (SentencePiece, <0xXX>), student SmolLM2
    assert trainable_rows(vm, "new") == sorted(vm.new)
    extra = set(trainable_rows(vm, "new+bytes")) - set(vm.new)
    want = {t for t, s in vm.shared.items() if re.fullmatch(r"<0x[0-9A-F]{2}>", gemma_vocab.tokens[s])}
    assert extra == want and 100 < len(want) <= 256
    assert all(len(smollm2_vocab.surface[t]) == 1 for t in extra)  # one byte each, e.g. b"\xab"


def test_resume_gives_the_same_weights(tiny_model_dirs, tmp_path):
    student, teacher = tiny_model_dirs["untied"], tiny_model_dirs["bos"]
    heal(student, tmp_path / "a", tiny_corpus(), tiny_config(steps=4), teacher=teacher, progress=False)
    cut = Healer(student, tiny_corpus(), tmp_path / "b", tiny_config(steps=4), teacher=teacher, progress=False)
    assert cut.run(until=2).steps_done == 2
    resumed = heal(student, tmp_path / "b", tiny_corpus(), tiny_config(steps=4), teacher=teacher, resume=True,
                   progress=False)
    assert resumed.steps_done == 4
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert not torch.equal(a["lm_head.weight"], _weights(student)["lm_head.weight"])  # untied: both sides trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_lora_is_merged_into_the_projections(tiny_model_dirs, tmp_path):
    student = tiny_model_dirs["tied"]
    heal(student, tmp_path / "o", tiny_corpus(), tiny_config(train="lora", loss="lm", lora_rank=2, lr=1e-2),
         progress=False)
    old_w, new_w = _weights(student), _weights(tmp_path / "o")
    assert set(old_w) == set(new_w)  # no adapter tensors: merged
    moved = {k for k in old_w if not torch.equal(old_w[k], new_w[k])}
    assert "model.embed_tokens.weight" in moved and any("q_proj" in k for k in moved) and any("down_proj" in k for k in moved)
    assert not any("norm" in k for k in moved)


def test_new_plus_lora_moves_new_rows_and_the_projections_only(tiny_model_dirs, tmp_path):
    student, teacher = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    heal(student, tmp_path / "o", tiny_corpus(), tiny_config(train="new+lora", loss="lm", lora_rank=2, lr=1e-2),
         teacher=teacher, progress=False)
    new = VocabMap.build(vocabulary_of_folder(teacher), vocabulary_of_folder(student)).new
    old_w, new_w = _weights(student), _weights(tmp_path / "o")
    assert set(old_w) == set(new_w)  # adapters merged
    emb = "model.embed_tokens.weight"
    changed = (old_w[emb] != new_w[emb]).any(1).nonzero().squeeze(1).tolist()
    assert changed and set(changed) <= set(new)  # shared rows stay as they were
    moved = {k for k in old_w if not torch.equal(old_w[k], new_w[k])}
    assert any("q_proj" in k for k in moved) and any("up_proj" in k for k in moved)
    assert not any("norm" in k for k in moved)



def test_torchrun_two_cpu_processes(tiny_model_dirs, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(30_000, langs=("en", "fr"))))
    out = tmp_path / "ddp"
    r = torchrun_cli(["heal", str(tiny_model_dirs["tied"]), str(out), "--teacher", str(tiny_model_dirs["bos"]),
                      "--corpus", str(corpus), "--steps", "3", "--batch-size", "2", "--seq-len", "24",
                      "--loss", "kd"])  # the teacher path, with both models' output layers cut to the shared rows
    assert_torchrun_ok(r)
    record = json.loads((out / "training.json").read_text())
    assert record["world_size"] == 2 and record["steps_done"] == 3  # the loop checks the ranks stayed in sync
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [1, 2, 3] and all(math.isfinite(h["kd"]) and h["kd"] > 0 for h in log)


# ---- CLI and bad input ----------------------------------------------------------------------

def test_cli_heal_reports_before_and_after(tiny_model_dirs, tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("It was the best of times, it was the worst of times.\n" * 4)
    r = CliRunner().invoke(cli, ["heal", str(tiny_model_dirs["tied"]), str(tmp_path / "o"), "--teacher",
                                 str(tiny_model_dirs["bos"]), "--steps", "2", "--batch-size", "2", "--seq-len", "24",
                                 "--text", str(text), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    payload = json.loads((tmp_path / "r.json").read_text())
    assert set(payload["before"]) == {"held.txt", "overall"} and payload["steps_done"] == 2
    assert payload["after"]["overall"] != payload["before"]["overall"]
    assert "held.txt" in (tmp_path / "o" / "README.md").read_text()


def test_cli_max_minutes_without_steps_runs_for_the_time_budget(tiny_model_dirs, tmp_path):
    common = ["heal", str(tiny_model_dirs["tied"]), "--teacher", str(tiny_model_dirs["bos"]), "--batch-size", "2",
              "--seq-len", "24", "--max-minutes", "0.02"]
    r = CliRunner().invoke(cli, common[:2] + [str(tmp_path / "t")] + common[2:])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "t" / "training.json").read_text())["config"]
    assert config["lr_by_time"] is True and config["steps"] > 10**6  # the clock ends it, the cosine spans it
    assert json.loads((tmp_path / "t" / "training.json").read_text())["stopped_at_time_limit"] is True
    r = CliRunner().invoke(cli, common[:2] + [str(tmp_path / "s")] + common[2:] + ["--steps", "2"])
    assert r.exit_code == 0, r.output
    config = json.loads((tmp_path / "s" / "training.json").read_text())["config"]
    assert config["lr_by_time"] is False and config["steps"] == 2


@pytest.mark.parametrize("args, message", [
    (["--corpus", "{tmp}/missing.txt"], "corpus path not found"),
    (["--corpus", "{tmp}/empty.txt"], "training corpus is empty"),
    (["--max-minutes", "0"], "max_minutes must be positive"),
    (["--loss", "alm", "--no-teacher"], "needs a teacher"),
    (["--out-inside"], "inside"),
    (["--out-exists"], "already exists"),
    (["--student-not-lm"], "cannot load the model"),
])
def test_cli_bad_input_one_line_and_nothing_written(tiny_model_dirs, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    student, out = tiny_model_dirs["tied"], tmp_path / "o"
    teacher = ["--teacher", str(tiny_model_dirs["bos"])]
    extra = [a.format(tmp=tmp_path) for a in args]
    if "--no-teacher" in extra:
        extra.remove("--no-teacher")
        teacher = []
    if "--out-inside" in extra:
        extra.remove("--out-inside")
        out = student / "healed"
    if "--out-exists" in extra:
        extra.remove("--out-exists")
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    if "--student-not-lm" in extra:
        extra.remove("--student-not-lm")
        from transformers import T5Config, T5ForConditionalGeneration

        student = tmp_path / "t5"  # an encoder-decoder: no causal LM class takes it
        T5ForConditionalGeneration(T5Config(vocab_size=800, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                            d_kv=8)).save_pretrained(student)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (student / f).write_bytes((tiny_model_dirs["tied"] / f).read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    r = CliRunner().invoke(cli, ["heal", str(student), str(out), *teacher, "--steps", "1", "--batch-size", "2",
                                 "--seq-len", "24", *extra])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not (student / "healed").exists()
    if "--out-exists" in args:
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_corpus_mix_by_source_draws_each_source_equally():
    import random

    corpus = Corpus([("big:a", "a " * 5000), ("big:b", "b " * 5000), ("small:c", "c " * 500)])
    assert corpus.sources() == {"big": [0, 1], "small": [2]}
    for mix, expected in (("chars", 500 / 10500), ("source", 0.5)):
        rng = random.Random(0)
        share = sum(corpus.window(rng, 20, mix).strip().startswith("c") for _ in range(4000)) / 4000
        assert abs(share - expected) < 0.03, (mix, share)
    with pytest.raises(TokenSurgeryError, match="mix must be"):
        corpus.window(random.Random(0), 20, "words")
