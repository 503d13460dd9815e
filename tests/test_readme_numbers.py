"""Every figure in README's prose is among the numbers of the result files its section cites
(`benchmarks/readme_numbers.py`), and the check catches a figure that is not."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def numbers():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "benchmarks" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_has_no_figure_outside_its_cited_results(numbers):
    found = numbers.orphans(ROOT / "README.md")
    assert found == [], "\n".join(f"README.md:{n}: {f} | {line}" for n, f, line in found)


def _write(tmp_path: Path, readme: str, results: dict) -> tuple[Path, Path]:
    folder = tmp_path / "results"
    folder.mkdir()
    for name, data in results.items():
        (folder / name).write_text(json.dumps(data) if name.endswith(".json") else data)
    path = tmp_path / "README.md"
    path.write_text(readme)
    return path, folder


def test_figures_are_looked_up_in_the_files_their_section_cites(numbers, tmp_path):
    readme = """# x

## Measured results

### Speed (`results/speed.md`)

Light took 57.9 s (1.39x busy), 2,342 steps; 12.5% fewer; `--candidates 1024` is an option.
The goal: 15 s. The wrong one: 58.0 s.
Ad hoc: 74 ms.

### Other

Cites nothing, so 57.9 is unknown here.
Measured elsewhere (external): 12.3.
"""
    path, folder = _write(tmp_path, readme, {
        "speed.json": {"wall_s": 57.91, "ratio": 1.3903, "steps": 2342, "fewer": 0.125},
        "speed.md": "| wall | 57.9 |", "other.json": {"x": 0.0583}})
    found = [(n, f) for n, f, _ in numbers.orphans(path, folder)]
    # 58.0 is in no file; 57.9 under "Other" is not in a file that section cites
    assert found == [(8, "58.0"), (13, "57.9")]


def test_numbers_outside_measured_results_are_checked_only_where_a_file_is_cited(numbers, tmp_path):
    readme = """# x

## Usage

Use `k` = 64 and stride 128.

The default heals 11.6% of the gap (`results/heal.md`), 3.483 on Thai.

## Measured results
"""
    path, folder = _write(tmp_path, readme, {"heal.json": {"closed": 0.1164, "thai": 3.4825}})
    # 3.4825 shows as 3.482 (round half to even of its binary value), not 3.483
    assert [(n, f) for n, f, _ in numbers.orphans(path, folder)] == [(7, "3.483")]


def test_git_show_cites_an_earlier_version_of_a_result_file(numbers):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    # results/transplant_light_multilingual.json at 8f5a375 held pure OMP's Hindi 32.079...
    assert "32.08" in numbers.cited_numbers("8f5a375", "results/transplant_light_multilingual.json")
    assert "32.08" not in numbers.numbers_of([ROOT / "results" / "transplant_light_multilingual.json"])
