"""Sizes no machine has are one message with the limit, before any work: a model of petabytes in a real
run, a KV cache for a hundred million new tokens."""

from __future__ import annotations

import time

from tests.cli._helpers import run_olmo_here
from tests.security._checkpoints import assert_one_error, olmo


def test_a_model_of_impossible_size_is_refused_before_the_run_directory_exists(tmp_path):
    started = time.monotonic()
    proc = olmo(
        "train",
        "--preset",
        "tiny",
        "--set",
        f"model.d_model={2**40}",
        "--set",
        "model.n_heads=1",
        "-o",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert_one_error(proc, 2, "parameters", "per process", "PiB")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_a_kv_cache_of_impossible_size_is_refused_with_what_fits(tmp_path):
    from tests._fixtures import write_checkpoint
    from tests.convert._helpers import tiny_train_config

    checkpoint, _ = write_checkpoint(tmp_path, tiny_train_config())
    proc = olmo("generate", str(checkpoint), "--prompt", "1 2 3", "-n", str(10**12), cwd=tmp_path)
    text = assert_one_error(proc, 2, "--max-new-tokens 1,000,000,000,000", "KV cache", "at most about")
    fits = int(text.split("at most about ")[1].split()[0].replace(",", ""))
    # The control, in this process: the same checkpoint generates a few tokens.
    proc = run_olmo_here("generate", str(checkpoint), "--prompt", "1 2 3", "-n", "8", cwd=tmp_path)
    assert proc.returncode == 0 and fits > 8, proc.stderr
