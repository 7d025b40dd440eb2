"""benchmarks/bench_serve.py end to end at its smallest: both servers start, agree on the greedy tokens,
the table and the scaling line are printed, --json is a parseable dump, and no server is left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli._helpers import clean_env

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"


@pytest.mark.slow
def test_bench_serve_smallest_run():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--concurrency", "1,2", "--repeats", "1", "--max-tokens", "4"]
        + ["--reference", "naive", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "same greedy tokens: True" in out.stderr
    assert "conc olmo tok/s" in out.stderr
    assert "olmo serve scaling: tok/s at concurrency 2 / concurrency 1 = " in out.stderr
    report = json.loads(out.stdout)
    assert [row["concurrency"] for row in report["levels"]] == [1, 2]
    for row in report["levels"]:
        assert row["ours"]["tokens_per_run"] == [4 * row["requests"]]
        assert row["theirs"]["tokens_per_run"] == [4 * row["requests"]]
        assert row["ours"]["tok_s"] > 0 and row["theirs"]["tok_s"] > 0
