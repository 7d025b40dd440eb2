"""Upstream's backward-compatible reading of trainer-state counters (docs/format.md §4.4)."""

from __future__ import annotations

import pytest

from olmo_cli.checkpoint.trainer_state import batch_geometry, normalize_trainer_state
from olmo_cli.errors import CheckpointError

B, L = 8, 16


def read(raw: dict) -> dict:
    return normalize_trainer_state(raw, global_batch_size=B, max_sequence_length=L)


def test_current_files_pass_through() -> None:
    raw = {
        "epoch": 2,
        "global_step": 10,
        "global_train_examples_seen_this_epoch": 33,
        "global_train_tokens_seen": 999,
        "world_size": 4,
    }
    assert read(raw) == raw


def test_examples_fall_back_in_upstream_order() -> None:
    assert (
        read({"global_step": 10, "global_train_examples_seen": 70})["global_train_examples_seen_this_epoch"]
        == 70
    )
    assert read({"global_step": 10, "global_data_step": 6})["global_train_examples_seen_this_epoch"] == 6 * B
    assert read({"global_step": 10})["global_train_examples_seen_this_epoch"] == 10 * B
    # A data step that is present wins even at 0, as upstream's dict.get(key, default) does.
    assert read({"global_step": 10, "global_data_step": 0})["global_train_examples_seen_this_epoch"] == 0


def test_tokens_and_epoch_defaults() -> None:
    assert read({"global_step": 10})["global_train_tokens_seen"] == 10 * B * L
    assert read({"global_step": 10, "global_data_step": 6})["global_train_tokens_seen"] == 6 * B * L
    assert read({"global_step": 1})["epoch"] == 0
    assert read({"global_step": 1, "epoch": None})["epoch"] == 0


def test_missing_step_or_geometry_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="global_step"):
        read({"epoch": 1})
    with pytest.raises(CheckpointError, match="global_train_batch_size"):
        normalize_trainer_state({"global_step": 3}, global_batch_size=None, max_sequence_length=L)
    with pytest.raises(CheckpointError, match="max_sequence_length"):
        normalize_trainer_state(
            {"global_step": 3, "global_train_examples_seen": 1}, global_batch_size=B, max_sequence_length=None
        )
    with pytest.raises(CheckpointError, match="trainer state dict"):
        read([1, 2])  # type: ignore[arg-type]


def test_batch_geometry_from_a_config_dict() -> None:
    assert batch_geometry({"global_train_batch_size": 4, "model": {"max_sequence_length": 32}}) == (4, 32)
    assert batch_geometry({"model": None}) == (None, None)
    assert batch_geometry(None) == (None, None)
