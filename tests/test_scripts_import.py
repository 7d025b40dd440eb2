"""The benchmarks and maintenance scripts are not run by the suite (they are timed, or need tools CI
lacks), so a rename in the engine would break them silently; each must at least import against today's
engine. Every one keeps its work under `if __name__ == "__main__"`, so importing runs nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*.py")])


def test_there_are_scripts():
    assert len(SCRIPTS) >= 8


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports(path):
    assert 'if __name__ == "__main__"' in path.read_text(), f"{path.name}: keep its work under a main guard"
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
