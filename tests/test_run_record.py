"""Result files record a command a reader can paste back into a shell."""

import importlib.util
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_recorded_command_splits_back_into_the_same_arguments(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_record", ROOT / "benchmarks" / "run_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["benchmarks/transplant_quality.py", "--variants", "omp;omp:blend=0;fvt", "--name", "a b", "--text", "it's"]
    monkeypatch.setattr(sys, "argv", argv)
    command = module.run_record()["command"]
    assert shlex.split(command) == ["python", *argv]
