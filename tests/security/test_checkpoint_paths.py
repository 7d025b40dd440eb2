"""A checkpoint is data, never instructions for the file system: names that one of its files gives for
other files (the checkpointer's lists, DCP storage paths, a Hugging Face weight index) are refused when
they leave the directory, and retention deletes only the run's own checkpoints. Each test builds real
checkpoints, forges the one value an attacker controls, and checks the whole tree around the run.

`olmo` runs as the installed command once per kind of refusal and for the plain retention run; the
other cases run its `main` in this process (the same exit codes and messages, a second or two faster)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from olmo_cli.checkpoint.sharded import MODEL_AND_OPTIM
from olmo_cli.errors import CheckpointError
from olmo_cli.load.read import read_checkpoint
from tests.cli._helpers import run_olmo_here
from tests.security._checkpoints import assert_one_error, edit_train_pt, olmo, tree_state, victims

LISTS = ("checkpoints", "unsharded_checkpoints", "ephemeral_checkpoints")


def traversal_names(root: Path) -> list[str]:
    return ["../victim", str(root / "victim"), "step2-unsharded/../../victim", "../step1-unsharded", ".."]


def forge_lists(checkpoint: Path, names: list[str]) -> None:
    def edit(state: dict) -> None:
        lists = {key: list(names) for key in LISTS}
        state["callbacks"]["checkpointer"] = lists
        state.update({key: [Path(n) for n in names] for key in LISTS})  # upstream's copies as well

    edit_train_pt(checkpoint, edit)


def retention(keep: int) -> list[str]:
    # Saves at every step and an ephemeral one in between: every list is pruned during the resume.
    return [
        "--set",
        "stop_at=5",
        "--set",
        "max_duration=5",
        "--set",
        "save_interval=2",
        "--set",
        "save_interval_ephemeral=1",
        "--set",
        f"save_num_checkpoints_to_keep={keep}",
    ]


@pytest.mark.parametrize("which", range(5))
@pytest.mark.parametrize("key", LISTS)
def test_every_list_refuses_every_traversal_name(tmp_path, which, key):
    from olmo_cli.errors import CheckpointError
    from olmo_cli.train.callbacks.checkpointer import checked_lists

    name = traversal_names(tmp_path)[which]
    with pytest.raises(CheckpointError, match=f"callbacks.checkpointer.{key} names .*refused"):
        checked_lists({key: ["step1-unsharded", name]}, "train.pt")
    assert checked_lists({key: ["step1", "step2-unsharded"]}, "train.pt") == {
        key: ["step1", "step2-unsharded"]
    }


@pytest.mark.parametrize(("which", "keep"), [(0, -1), (1, 1), (2, -1)])
def test_traversal_names_in_the_runs_own_checkpoint_are_refused(checkpoint, tmp_path, keep, which):
    victims(tmp_path)
    forge_lists(checkpoint, [traversal_names(tmp_path)[which]])
    before = tree_state(tmp_path, skip=(checkpoint.parent,))

    args = ("resume", str(checkpoint.parent), *retention(keep))
    proc = olmo(*args, cwd=tmp_path) if which == 0 else run_olmo_here(*args, cwd=tmp_path)

    assert_one_error(proc, 4, "callbacks.checkpointer", "refused")
    assert tree_state(tmp_path, skip=(checkpoint.parent,)) == before


@pytest.mark.parametrize("keep", [-1, 1])
def test_lists_of_a_checkpoint_from_elsewhere_are_not_used_for_retention(checkpoint, tmp_path, keep):
    victims(tmp_path)
    elsewhere = tmp_path / "downloads" / checkpoint.name
    elsewhere.parent.mkdir()
    shutil.copytree(checkpoint, elsewhere)
    # Relative to the new run these names reach the victims; relative to downloads/ too.
    forge_lists(elsewhere, ["../victim", "../../victim", "../step1-unsharded", "step2-unsharded"])
    new_run = tmp_path / "continued"
    shutil.copy(checkpoint.parent / "config.yaml", tmp_path / "config.yaml")
    before = tree_state(tmp_path, skip=(new_run,))

    proc = run_olmo_here(
        "resume", str(new_run), "--load-path", str(elsewhere), *retention(keep), cwd=tmp_path
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(tmp_path, skip=(new_run,)) == before
    saved = sorted(p.name for p in new_run.iterdir() if p.name.startswith("step"))
    assert "step5-unsharded" in saved  # the resumed run trained and saved in its own directory
    if keep == 1:
        assert saved == ["step4-unsharded", "step5-unsharded"]  # retention ran, on its own checkpoints


def test_a_listed_checkpoint_that_is_a_symlink_out_of_the_run_is_not_deleted(checkpoint, tmp_path):
    outside = victims(tmp_path)[1]  # shaped like a checkpoint
    link = checkpoint.parent / "step1-unsharded"
    os.symlink(outside, link, target_is_directory=True)
    forge_lists(checkpoint, ["step1-unsharded"])  # a valid name; its directory leads outside
    before = tree_state(tmp_path, skip=(checkpoint.parent,))

    proc = run_olmo_here("resume", str(checkpoint.parent), *retention(1), cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(tmp_path, skip=(checkpoint.parent,)) == before
    assert link.is_symlink()  # retention skipped it: not one of this run's checkpoint directories


def test_retention_still_deletes_the_runs_own_checkpoints(checkpoint, tmp_path):
    proc = olmo("resume", str(checkpoint.parent), *retention(1), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in checkpoint.parent.iterdir() if p.name.startswith("step"))
    assert names == ["step4-unsharded", "step5-unsharded"]


# ---- DCP storage paths ------------------------------------------------------------------------------


def sharded_copy(checkpoint: Path, tmp_path: Path) -> Path:
    """A sharded checkpoint of the same weights, written by olmo's own DCP writer."""
    import torch

    from olmo_cli.checkpoint.sharded import write_sharded
    from olmo_cli.config.loader import load_config
    from olmo_cli.model.olmo import build_model
    from olmo_cli.train.optim import build_optimizer
    from olmo_cli.world import init_world

    cfg = load_config(config_file=checkpoint / "config.yaml").config
    model = build_model(cfg.model, "cpu")
    optim = build_optimizer(model, cfg)
    state = torch.load(checkpoint / "train.pt", weights_only=False)
    return write_sharded(
        tmp_path / "sharded" / "step2",
        model=model,
        optim=optim,
        trainer_state=state,
        config_yaml=(checkpoint / "config.yaml").read_text(),
        world=init_world("cpu"),
    )


def forge_storage_paths(sharded: Path, path_for: str) -> None:
    meta_file = sharded / MODEL_AND_OPTIM / ".metadata"
    metadata = pickle.loads(meta_file.read_bytes())  # our own file, trusted here
    for info in metadata.storage_data.values():
        info.relative_path = path_for
    meta_file.write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize("kind", ["parent", "absolute", "nested", "symlink"])
def test_dcp_storage_paths_out_of_the_checkpoint_are_refused(checkpoint, tmp_path, monkeypatch, kind):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    sharded = sharded_copy(checkpoint, tmp_path)
    data_file = next((sharded / MODEL_AND_OPTIM).glob("*.distcp"))
    secret = tmp_path / "secret.distcp"
    shutil.copy(data_file, secret)  # a readable file of the right shape, outside the checkpoint
    target = {
        "parent": "../../secret.distcp",
        "absolute": str(secret),
        "nested": f"sub/{data_file.name}",
        "symlink": "link.distcp",
    }[kind]
    if kind == "symlink":
        os.symlink(secret, sharded / MODEL_AND_OPTIM / "link.distcp")
    forge_storage_paths(sharded, target)

    if kind == "parent":  # once through the command line, for the exit code and the one message
        proc = olmo("generate", str(sharded), "--prompt", "1 2 3", "--max-new-tokens", "2", cwd=tmp_path)
        assert_one_error(proc, 4, "relative_path", "refused")
    with pytest.raises(CheckpointError, match="relative_path.*refused"):
        read_checkpoint(sharded)


def test_dcp_byte_ranges_beyond_the_file_are_refused(checkpoint, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    sharded = sharded_copy(checkpoint, tmp_path)
    meta_file = sharded / MODEL_AND_OPTIM / ".metadata"
    metadata = pickle.loads(meta_file.read_bytes())
    first = next(iter(metadata.storage_data.values()))
    first.length = 2**40
    meta_file.write_bytes(pickle.dumps(metadata))

    with pytest.raises(CheckpointError, match="truncated or damaged"):
        read_checkpoint(sharded)


# ---- Hugging Face weight index ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_hf_weight_map_entries_out_of_the_directory_are_refused(checkpoint, tmp_path, kind):
    from olmo_cli.convert.export import export_hf

    hf = tmp_path / "hf"
    export_hf(read_checkpoint(checkpoint), None, hf, max_shard_bytes=20_000)
    index_file = hf / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    secret = tmp_path / "secret.safetensors"
    shutil.move(hf / first, secret)
    name = {"parent": "../secret.safetensors", "absolute": str(secret), "symlink": first}[kind]
    if kind == "symlink":
        os.symlink(secret, hf / first)
    index["weight_map"] = {k: (name if v == first else v) for k, v in index["weight_map"].items()}
    index_file.write_text(json.dumps(index))

    with pytest.raises(CheckpointError, match="weight_map.*refused"):
        read_checkpoint(hf)
    if kind == "parent":
        proc = olmo("convert-hf", "--from-hf", str(hf), "--output", str(tmp_path / "back"), cwd=tmp_path)
        assert_one_error(proc, 4, "weight_map", "refused")
        assert not (tmp_path / "back").exists()
