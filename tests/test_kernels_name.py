"""The repository's top-level kernels/ folder must not shadow the hub's `kernels` package
(transformers 5.25+ imports it when it loads a model) when the repository root is on sys.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import kernels, tokensurgery.kernels.omp as omp; print(kernels.__file__); print(omp.__file__)"


def _probe(tmp_path: Path, extra: list[Path], code: str = PROBE) -> list[str]:
    """Run `code` in a fresh interpreter with the repository root first on sys.path; its output words."""
    env_path = ":".join(str(p) for p in [ROOT, *extra])
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_hub_kernels_package_wins_over_the_repository_folder(tmp_path):
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("HUB = True\n")
    (site / "kernels" / "sub.py").write_text("X = 1\n")
    hub, omp = _probe(tmp_path, [site])
    assert Path(hub) == site / "kernels" / "__init__.py"
    assert Path(omp) == ROOT / "kernels" / "omp.py"  # tokensurgery's own kernels are untouched
    assert _probe(tmp_path, [site], "import kernels.sub, kernels; print(kernels.HUB, kernels.sub.X)") == ["True", "1"]


def test_without_a_hub_package_the_folder_stays_importable(tmp_path):
    # transformers 5.25+ installs the hub's package; hide site-packages from the hand-over's
    # search (torch and tokensurgery's own kernels are imported before that)
    code = ("import sys, tokensurgery.kernels.omp as omp; "
            "sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; "
            "import kernels; print(kernels.__file__); print(omp.__file__)")
    own, omp = _probe(tmp_path, [], code)
    assert Path(own) == ROOT / "kernels" / "__init__.py"
    assert Path(omp) == ROOT / "kernels" / "omp.py"
