"""Checkpoint directory names, latest-checkpoint search and unsharded detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from olmo_cli.checkpoint.layout import (
    checkpoint_dir_name,
    find_latest_checkpoint,
    is_unsharded,
    parse_step,
    resolve_state_file,
)


def make_dirs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_names_and_steps() -> None:
    assert checkpoint_dir_name(40, unsharded=True) == "step40-unsharded"
    assert checkpoint_dir_name(40, unsharded=False) == "step40"
    assert parse_step("step40") == 40 and parse_step("step40-unsharded") == 40
    for other in ("step40-unsharded-tmp", "step", "latest", "stepx", "step-3", "step 4"):
        assert parse_step(other) is None


def test_latest_is_the_highest_step_and_a_tie_prefers_sharded(tmp_path: Path) -> None:
    make_dirs(tmp_path, "step5", "step9-unsharded", "step10-unsharded", "step10", "step11-unsharded-tmp")
    make_dirs(tmp_path, "stepfoo", "latest")
    (tmp_path / "step99").write_text("a file, not a checkpoint")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step10"
    make_dirs(tmp_path, "step12-unsharded")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step12-unsharded"


def test_latest_finds_a_lone_step0_unsharded(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path) is None
    assert find_latest_checkpoint(tmp_path / "missing") is None
    make_dirs(tmp_path, "step0-unsharded")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step0-unsharded"


def test_unsharded_by_suffix_even_before_it_exists(tmp_path: Path) -> None:
    assert is_unsharded(tmp_path / "step3-unsharded")
    assert is_unsharded(f"{tmp_path}/step3-unsharded/")
    assert not is_unsharded(tmp_path / "step3")


@pytest.mark.parametrize("model_file", ["model.safetensors", "model.pt"])
def test_unsharded_by_content_for_a_downloaded_stepN(tmp_path: Path, model_file: str) -> None:
    downloaded = tmp_path / "step1000"
    downloaded.mkdir()
    (downloaded / model_file).write_bytes(b"")
    assert is_unsharded(downloaded)


def test_sharded_layouts_are_not_unsharded(tmp_path: Path) -> None:
    legacy = tmp_path / "step5"
    legacy.mkdir()
    (legacy / "rank0.pt").write_bytes(b"")
    (legacy / "config.yaml").write_text("{}")
    assert not is_unsharded(legacy)
    olmo_core = tmp_path / "step6"
    (olmo_core / "model").mkdir(parents=True)
    assert not is_unsharded(olmo_core)


def test_loader_rule_prefers_safetensors(tmp_path: Path) -> None:
    assert resolve_state_file(tmp_path, "model") is None
    (tmp_path / "model.pt").write_bytes(b"")
    assert resolve_state_file(tmp_path, "model") == tmp_path / "model.pt"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_state_file(tmp_path, "model") == tmp_path / "model.safetensors"
