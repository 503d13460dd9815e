"""README's marked tables are exactly what `benchmarks/readme_tables.py` renders from results/."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_result_files(tables, capsys):
    assert tables.main(["--check"]) == 0, capsys.readouterr().out


def test_every_marked_table_has_a_renderer_and_is_rendered(tables):
    readme = (ROOT / "README.md").read_text()
    names = re.findall(r"^<!-- results:([\w-]+) -->$", readme, re.M)  # markers on their own line
    assert names == [m.group("name") for m in tables.BLOCK.finditer(readme)]  # each one closed
    assert len(names) >= 4 and len(set(names)) == len(names)
    assert set(names) <= set(tables.TABLES)
    for name in names:
        body = tables.TABLES[name]()
        assert body.startswith("| ") and body.count("\n") >= 2, name


def test_a_changed_figure_is_caught_and_rewritten(tables, tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- results:bundled_bpb -->\n(.*?)<!-- /results:bundled_bpb -->", readme, re.S).group(1)
    first = re.search(r"\d\.\d{3}", block).group()
    stale = readme.replace(block, block.replace(first, "9.999", 1))
    path = tmp_path / "README.md"
    path.write_text(stale)
    assert tables.main(["--check", "--readme", str(path)]) == 1
    assert "9.999" in capsys.readouterr().out
    assert tables.main(["--readme", str(path)]) == 0
    assert path.read_text() == readme


def test_an_unknown_marker_is_an_error(tables, tmp_path):
    path = tmp_path / "README.md"
    path.write_text("<!-- results:nope -->\n| a |\n<!-- /results:nope -->\n")
    with pytest.raises(SystemExit, match="nope"):
        tables.main(["--check", "--readme", str(path)])
