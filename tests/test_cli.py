"""The CLI: commands on the bundled models, and one-line errors (exit 2) on bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tokensurgery.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip().splitlines()[-1]  # earlier stderr lines may be progress messages
    assert err.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1
    for n in needles:
        assert n in err, err


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("models", "inspect", "import", "eval", "transplant", "bytes", "hypernet", "byte-model"):
        assert cmd in result.output


def test_models_lists_aliases(smollm2_dir, gemma_dir):
    result = run("models")
    assert result.exit_code == 0
    assert "smollm2-135m" in result.output and "gemma3-270m" in result.output
    assert str(smollm2_dir) in result.output


def test_inspect_real_pair(smollm2_dir, gemma_dir):
    result = run("inspect", "smollm2-135m", "gemma3-270m", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # progress lines go to stderr
    assert data["source"]["family"] == "byte_level_bpe" and data["target"]["family"] == "sentencepiece_bpe"
    assert 45_000 < data["map"]["shared"] < 47_500
    text = run("inspect", "smollm2-135m", "gemma3-270m").output
    assert "shared tokens" in text and "sample decompositions" in text


def test_eval_compare_tiny(tiny_model_dirs, tmp_path):
    out = tmp_path / "r.json"
    result = run("eval", tiny_model_dirs["tied"], "--lang", "en", "--max-bytes", "500", "--compare", tiny_model_dirs["bos"],
                 "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["results"]) == {str(tiny_model_dirs["tied"]), str(tiny_model_dirs["bos"])}
    tied, bos = data["results"][str(tiny_model_dirs["tied"])], data["results"][str(tiny_model_dirs["bos"])]
    assert bos[0]["bytes"] == 500  # BOS first: every byte scored
    assert 490 < tied[0]["bytes"] < 500  # no BOS: the first token has no context and is not counted


# ---- bad input ----------------------------------------------------------------------------

def test_missing_path(tmp_path):
    assert_one_line_error(run("eval", tmp_path / "nope", "--lang", "en"), "no such file")
    assert_one_line_error(run("inspect", tmp_path / "nope"), "no such file")
    assert_one_line_error(run("eval", "smollm2-135m", "--text", tmp_path / "missing.txt"), "not found")
    assert list(tmp_path.iterdir()) == []


def test_folder_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("eval", tmp_path / "empty", "--lang", "en"), "config.json")


def test_truncated_safetensors(tiny_model_dirs, tmp_path):
    folder = tmp_path / "trunc"
    shutil.copytree(tiny_model_dirs["tied"], folder)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    before = tree(tmp_path)
    assert_one_line_error(run("eval", folder, "--lang", "en"), "cannot load")
    assert tree(tmp_path) == before


def test_tokenizer_not_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    assert_one_line_error(run("inspect", bad), "not a valid tokenizer.json")


def test_embedding_smaller_than_vocabulary(tiny_model_dirs, tmp_path):
    folder = tmp_path / "small_emb"
    shutil.copytree(tiny_model_dirs["tied"], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    n = len(tok["model"]["vocab"])
    tok["added_tokens"] += [{"id": n + i, "content": f"<extra{i}>", "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i in range(5)]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    assert_one_line_error(run("eval", folder, "--lang", "en"), "rows", "tokens")


def _write_gguf(path, arch):
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_of_unsupported_architecture(tmp_path):
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    assert "mamba2" not in GGUF_SUPPORTED_ARCHITECTURES
    src = tmp_path / "in"
    src.mkdir()
    _write_gguf(src / "odd.gguf", "mamba2")
    assert_one_line_error(run("import", src / "odd.gguf", "--out", tmp_path / "out"), "mamba2", "not supported")
    assert not (tmp_path / "out").exists()
    corrupt = src / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 10)
    assert_one_line_error(run("import", corrupt, "--out", tmp_path / "out"), "not a readable GGUF")
    assert tree(tmp_path) == ["in", "in/corrupt.gguf", "in/odd.gguf"]


def test_output_inside_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _write_gguf(src / "odd.gguf", "llama")
    before = tree(tmp_path)
    assert_one_line_error(run("import", src / "odd.gguf", "--out", src, "--force"), "inside (or contains) the input")
    assert_one_line_error(run("import", src / "odd.gguf", "--out", src), "inside (or contains) the input")
    assert tree(tmp_path) == before


def test_debug_shows_the_exception(tmp_path):
    result = CliRunner().invoke(cli, ["--debug", "eval", str(tmp_path / "nope"), "--lang", "en"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "TokenSurgeryError"


# ---- transplant ---------------------------------------------------------------------------

def test_transplant_help_groups_options():
    result = run("transplant", "--help")
    assert result.exit_code == 0
    for heading in ("Method:", "Compute:", "Output and evaluation:"):
        assert heading in result.output
    for opt in ("--method", "-k", "--candidates", "--solve-dtype", "--device", "--force", "--text", "--lang", "--report"):
        assert opt in result.output


def test_transplant_tiny_with_eval_and_report(tiny_model_dirs, tmp_path):
    out, png = tmp_path / "out", tmp_path / "report.png"
    # --no-blend: the tiny vocabularies have too few shared tokens per class for any OMP weight,
    # so the default would give every row by FVT and solve nothing
    result = run("transplant", tiny_model_dirs["tied"], tiny_model_dirs["bos"], out, "-k", "8", "--eval-lang", "en",
                 "--max-bytes", "400", "--report", png, "--no-blend")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "reconstruction error" in result.output and "bits/byte base" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "Measured quality" in card and "| en.txt |" in card and str(tiny_model_dirs["bos"]) in card


def test_transplant_json_has_the_summary_phases_and_scores(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    result = run("transplant", tiny_model_dirs["tied"], tiny_model_dirs["bos"], out, "-k", "8", "--lang", "en",
                 "--max-bytes", "300", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert data["filled"] > 0 and data["method"] == "omp"
    assert {"open inputs", "map vocabularies", "load embeddings", "blend fit", "fill rows", "write"} <= set(data["phases"])
    assert sum(data["phases"].values()) <= data["seconds"] + 0.5  # the phases do not overlap
    card = (out / "README.md").read_text()
    before, after = data["bits_per_byte"]["en.txt"]["base"], data["bits_per_byte"]["en.txt"]["transplanted"]
    assert f"| en.txt | {before:.4f} | {after:.4f} |" in card


def test_transplant_bad_input_one_line(tiny_model_dirs, tmp_path):
    base, donor = tiny_model_dirs["tied"], tiny_model_dirs["bos"]
    assert_one_line_error(run("transplant", base, donor, tmp_path / "a", "-k", "500"), "larger than the dictionary")
    assert_one_line_error(run("transplant", base, donor, tmp_path / "b", "--candidates", "many"), "--candidates")
    assert_one_line_error(run("transplant", base, tmp_path / "nope", tmp_path / "c"), "no such file")
    assert_one_line_error(run("transplant", base, donor, tmp_path / "d", "--eval", tmp_path / "missing.txt"), "not found")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep").write_text("x")
    assert_one_line_error(run("transplant", base, donor, tmp_path / "e"), "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_bytes_commands_on_tiny_model(tiny_model_dirs, tmp_path):
    folder = str(tiny_model_dirs["tied"])
    r = CliRunner().invoke(cli, ["bytes", "next", folder, "The qu", "--top", "3"])
    assert r.exit_code == 0, r.output
    probs = [float(line.split()[-1]) for line in r.stdout.strip().splitlines()]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    r = CliRunner().invoke(cli, ["bytes", "generate", folder, r"The\xc3", "--escapes", "--max-new-bytes", "5", "--seed", "3"])
    assert r.exit_code == 0, r.output
    from tokensurgery.byte_models import ByteLM

    same = ByteLM.from_pretrained(folder, progress=False).generate(b"The\xc3", max_new_bytes=5, temperature=0.8, seed=3,
                                                                  as_bytes=True)
    assert r.stdout == (b"The\xc3" + same).decode("utf-8", "replace") + "\n" and 0 < len(same) <= 5
    r = CliRunner().invoke(cli, ["bytes", "generate", folder, "The qu", "--per-byte", "--temperature", "0",
                                 "--max-new-bytes", "4"])
    assert r.exit_code == 0, r.output
    by_byte = ByteLM.from_pretrained(folder, progress=False).generate_bytes("The qu", max_new_bytes=4, temperature=0)
    assert r.stdout == "The qu" + by_byte + "\n"
    r = CliRunner().invoke(cli, ["bytes", "generate", folder, "The qu", "--per-byte", "--top-k", "5"])
    assert r.exit_code != 0 and "do not apply with --per-byte" in r.output
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat.\n")
    out = tmp_path / "s.json"
    r = CliRunner().invoke(cli, ["bytes", "score", folder, str(tiny_model_dirs["bos"]), "--text", str(text),
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["results"]
    assert [row["model"].startswith("mix(") for row in rows] == [False, False, True]
    assert all(row["bytes"] == 24 and row["bits_per_byte"] > 0 for row in rows)


def test_bytes_bad_input(tiny_model_dirs):
    r = CliRunner().invoke(cli, ["bytes", "score", str(tiny_model_dirs["tied"])])
    assert r.exit_code == 2 and "--text" in r.output
    r = CliRunner().invoke(cli, ["bytes", "next", str(tiny_model_dirs["tied"]), r"\x", "--escapes"])
    assert r.exit_code == 2 and "escape" in r.output
    r = CliRunner().invoke(cli, ["bytes", "score", str(tiny_model_dirs["tied"]), "--lang", "en", "--weights", "1,2"])
    assert_one_line_error(r, "--weights", "two or more")
    folder = str(tiny_model_dirs["tied"])
    r = CliRunner().invoke(cli, ["bytes", "score", folder, folder, "--lang", "en", "--weights", "1,2,3"])
    assert_one_line_error(r, "3 numbers for 2 models")


def _commands(group, prefix=()):
    import click

    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):  # list_commands loads the plugins' commands first
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_option_has_help_and_one_meaning():
    """Each command's --help renders; every option has help; an option name means the same
    (same help text) in every command; the shared options are the README's table."""
    from tokensurgery.cli.options import SHARED

    meaning: dict[str, set[str]] = {}
    for path, command in _commands(cli):
        result = run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        for param in command.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            assert param.help, (path, param.opts)
            assert param.opts[0] in result.output, (path, param.opts)
            meaning.setdefault(param.opts[0], set()).add(param.help)
    clashes = {name: helps for name, helps in meaning.items() if len(helps) > 1}
    assert not clashes, clashes
    for name, text in SHARED.items():
        assert meaning[name] == {text}, name
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in SHARED:
        assert f"`{name}" in readme, f"README's option table lacks {name}"
