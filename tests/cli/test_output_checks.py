"""Outputs are checked before the work (issue 18 point 1): every command that writes somewhere says at
once, with exit 2, that the place cannot be created or written, before it reads a checkpoint or data.

The checkpoint given is one that does not exist, so a command that did any work first would fail with
a different message (exit 4) instead: the refusal proves the order. Running as root, permission bits
decide nothing, so the places are ones no user can write: under a file, and inside /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from olmo_cli.atomic import check_output_dir, check_output_file, check_writable
from olmo_cli.errors import UsageError

from ._helpers import run_olmo_here

MISSING = "no-such-checkpoint"


def _commands(out: str) -> dict[str, list[str]]:
    return {
        "convert-hf": ["convert-hf", MISSING, "--output", out],
        "convert-hf --from-hf": ["convert-hf", "--from-hf", MISSING, "--output", out],
        "quantize --method": ["quantize", MISSING, "--method", "int8", "--output", out],
        "quantize --gguf": ["quantize", MISSING, "--gguf", "q8_0", "--output", out + ".gguf"],
        "eval --output": ["eval", MISSING, "--perplexity", "x.npy", "--output", out + ".json"],
        "finetune merge": ["finetune", "merge", MISSING, "--output", out],
        "soup": ["soup", MISSING, MISSING, "--output", out],
    }


@pytest.mark.parametrize("name", list(_commands("x")))
def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, name):
    (tmp_path / "blocker").write_text("a file")
    out = str(tmp_path / "blocker" / "out")
    proc = run_olmo_here(*_commands(out)[name], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is a file, not a directory" in proc.stderr and "blocker" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # nothing created


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("name", ["convert-hf", "quantize --method", "eval --output", "soup"])
def test_an_output_where_nothing_can_be_created_is_refused(tmp_path, name):
    proc = run_olmo_here(*_commands("/proc/olmo-out")[name], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot write --output /proc/olmo-out" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_data_tokenize_and_train_refuse_an_output_under_a_file(tmp_path):
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "d.jsonl").write_text('{"text": "hello world"}\n')
    tok = run_olmo_here(
        "data", "tokenize", "d.jsonl", "-t", "builtin:tiny-bpe-4096", "-o", "blocker/tok", cwd=tmp_path
    )
    train = run_olmo_here("train", "--preset", "tiny", "--save-folder", "blocker/run", cwd=tmp_path)
    for proc in (tok, train):
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "cannot create" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "d.jsonl"]


def test_the_checks_accept_what_can_be_written_and_leave_nothing(tmp_path):
    check_output_dir(tmp_path / "a" / "b", overwrite=False)
    check_output_file(tmp_path / "c" / "r.json")
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no directory was created
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError, match="not empty"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)
    with pytest.raises(UsageError, match="is a directory"):
        check_output_file(tmp_path / "full")
    with pytest.raises(UsageError, match="is a file"):
        check_output_dir(tmp_path / "full" / "x", overwrite=True)
