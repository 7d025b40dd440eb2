"""Fixtures every test directory can use: trained models and checkpoints built once per session (the
plain builders are in tests/_fixtures.py). Session results are read only; a test that changes files
takes a copy (`checkpoint`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Whether olmo may use the network is each test's choice (tests/hub/test_offline.py sets these itself);
# a developer's own offline switch must not turn the loopback servers' tests into refusals.
for _switch in ("OLMO_OFFLINE", "HF_HUB_OFFLINE"):
    os.environ.pop(_switch, None)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A run of the few-thousand-parameter model (tests/train/_runs.py) trained for 2 steps, once per
    session: its unsharded checkpoint at step 2, with optimizer and trainer state. Read only."""
    from tests.train._runs import quiet_run, run_config

    root = tmp_path_factory.mktemp("small-run")
    result, _ = quiet_run(run_config(root, max_duration=2, stop_at=2, save_interval=2))
    assert result.checkpoint is not None
    return result.checkpoint


@pytest.fixture
def checkpoint(small_run, tmp_path) -> Path:
    """A fresh copy of `small_run`'s run directory in `tmp_path/run` (tests forge its files freely): its
    step-2 checkpoint. The data directory its config names stays shared, read only."""
    shutil.copytree(small_run.parent, tmp_path / "run", symlinks=True)
    return tmp_path / "run" / small_run.name


@pytest.fixture(scope="session")
def lookup_checkpoint(tmp_path_factory):
    """The tiny model trained on the lookup task (tests/eval/_trained.py), once per session:
    (checkpoint with its config and tokenizer, model). Read only."""
    from tests.eval._trained import trained_checkpoint

    return trained_checkpoint(tmp_path_factory.mktemp("lookup") / "ckpt")
