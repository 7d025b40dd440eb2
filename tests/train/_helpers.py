"""Shared helpers for the training-engine tests: rounding to a published check value, and `olmo` run as
a separate process. (Presets and small configs are in tests/_fixtures.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def significant(x: float, digits: int) -> float:
    """`x` rounded to `digits` significant figures, to compare with a published check value."""
    return float(f"{x:.{digits}g}")


REPO = Path(__file__).resolve().parents[2]


def olmo_process(*args: str, cwd: Path) -> None:
    """`python -m olmo_cli ARGS` in its own process (free of any torchrun variables of ours); asserts it
    succeeded, showing the ends of its output when not."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "olmo_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
