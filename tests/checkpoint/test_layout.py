"""Checkpoint directory names, latest-checkpoint search and the loader's file rule (kinds: test_kind.py)."""

from __future__ import annotations

from pathlib import Path

from olmo_cli.checkpoint.layout import (
    checkpoint_dir_name,
    find_latest_checkpoint,
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


def test_loader_rule_prefers_safetensors(tmp_path: Path) -> None:
    assert resolve_state_file(tmp_path, "model") is None
    (tmp_path / "model.pt").write_bytes(b"")
    assert resolve_state_file(tmp_path, "model") == tmp_path / "model.pt"
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert resolve_state_file(tmp_path, "model") == tmp_path / "model.safetensors"
