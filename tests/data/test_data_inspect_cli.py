"""`olmo data inspect` as a user runs it: counts from a tokenized directory, and the vocabulary check that
stops a mismatched model before training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from _token_data import write_token_dir, write_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from _helpers import run_olmo  # noqa: E402


def test_counts_from_a_token_directory_with_the_tiny_preset(tmp_path):
    # 300 + 300 tokens, the tiny preset's 256-token instances: 1 instance per file, 44 tokens dropped each.
    parts = [np.arange(300) % 4000, (np.arange(300) * 7) % 4096]
    parts[1][5] = 4095  # the largest id the tiny vocabulary allows
    directory = write_token_dir(tmp_path / "tok", parts, documents=[3, 5])
    proc = run_olmo("data", "inspect", str(directory), "--preset", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["tokens"], out["seq_len"], out["instances"], out["dropped_tokens"]) == (600, 256, 2, 88)
    assert (out["documents"], out["documents_from"]) == (8, "manifest")
    assert (out["max_token_id"], out["vocab_size"], out["fits_vocab"]) == (4095, 4096, True)


def test_an_id_beyond_the_vocabulary_is_exit_3_with_the_numbers_shown(tmp_path):
    path = write_tokens(tmp_path / "a.npy", [1, 2, 50_279, 0], "uint16")
    proc = run_olmo("data", "inspect", str(path), "--seq-len", "2", "--vocab-size", "50279")
    assert proc.returncode == 3
    assert "50,279: TOO LARGE" in proc.stdout  # the table is printed before the error
    assert "token id 50279" in proc.stderr and "vocabulary has 50279 ids" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_raw_files_without_a_manifest_take_dtype_and_eos_from_flags(tmp_path):
    path = write_tokens(tmp_path / "a.npy", [7, 9, 99, 70_000, 99], "uint32")
    proc = run_olmo(
        "data", "inspect", str(path), "--seq-len", "2", "--dtype", "uint32", "--eos-token-id", "99", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["dtype"], out["tokens"], out["documents"], out["documents_from"]) == (
        "uint32",
        5,
        2,
        "EOS count",
    )
    assert out["max_token_id"] == 70_000 and out["vocab_size"] is None and out["fits_vocab"] is None


def test_missing_data_is_one_clear_error(tmp_path):
    proc = run_olmo("data", "inspect", str(tmp_path / "nothing-here"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "nothing-here" in proc.stderr
