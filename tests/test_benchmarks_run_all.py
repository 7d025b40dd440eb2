"""benchmarks/run_all.py end to end at the smallest settings: one fast benchmark's measures reach the table
and the combined JSON; a failing one is a row and exit status 1, a missing anchor a skipped row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"
KEYS = {"measure", "unit", "ours", "anchor", "anchor_name", "ratio", "ours_spread", "anchor_spread"}


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN_ALL), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.mark.slow
def test_one_benchmark_reaches_the_table_and_the_json():
    pytest.importorskip("transformers")
    small = "--batch 2 --seq 16 --warmup 1 --steps 1 --repeats 2"
    proc = run_all("--only", "train_step", "--args", f"train_step={small}", "--json")
    assert proc.returncode == 0, proc.stderr
    combined = json.loads(proc.stdout)
    assert combined["benchmarks"][0]["status"] == "ok"
    found, of_peak = combined["measures"]  # tokens/s against transformers, our FLOP/s against the peak
    assert of_peak["unit"] == "TFLOP/s" and "matmul peak" in of_peak["anchor_name"]
    assert 0 < of_peak["ratio"] == of_peak["ours"] / of_peak["anchor"]
    assert KEYS <= set(found) and found["benchmark"] == "train_step"
    assert found["anchor_name"] == "transformers" and found["unit"] == "tokens/s"
    assert found["ours_spread"][0] <= found["ours"] <= found["ours_spread"][1]
    assert found["ratio"] > 0
    header = next(line for line in proc.stderr.splitlines() if line.startswith("benchmark "))
    columns = "benchmark measure unit ours anchor anchor name ratio ours spread anchor spread"
    assert header.split() == columns.split()
    row = next(line for line in proc.stderr.splitlines() if line.startswith("train_step "))
    assert found["measure"] in row and f"{found['ratio']:.2f}x" in row


@pytest.mark.slow
def test_a_failure_is_a_row_and_exit_1_and_a_missing_anchor_is_skipped():
    proc = run_all("--only", "inspect_batch,tokenize", "--args", "inspect_batch=--no-such-flag",
                   "--dolma", "/nonexistent/dolma")  # fmt: skip
    assert proc.returncode == 1
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:]}
    assert "failed:" in rows["inspect_batch"] and "--no-such-flag" in rows["inspect_batch"]
    assert "skipped: dolma not found" in rows["tokenize"]
