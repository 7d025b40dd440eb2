"""The one kind detector: what a path is, from its files alone; a run folder resolves to its latest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olmo_cli.checkpoint.kind import checkpoint_kind, locate_checkpoint
from olmo_cli.errors import CheckpointError


def _dir(root: Path, name: str, *files: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for file in files:
        target = path / file
        if file.endswith("/"):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")
    return path


@pytest.mark.parametrize("model_file", ["model.safetensors", "model.pt"])
def test_unsharded_by_content_whatever_the_name(tmp_path: Path, model_file: str) -> None:
    # Upstream goes by the -unsharded suffix alone; a downloaded copy named step1000/ is still unsharded.
    assert checkpoint_kind(_dir(tmp_path, "step1000", model_file, "config.yaml")) == "unsharded"
    assert checkpoint_kind(_dir(tmp_path, "anything", model_file)) == "unsharded"


def test_sharded_layouts(tmp_path: Path) -> None:
    assert checkpoint_kind(_dir(tmp_path, "step4", "model_and_optim/", "train/")) == "sharded"
    # Upstream's legacy rank files and OLMo-core's model/ beside a model file are not unsharded.
    assert checkpoint_kind(_dir(tmp_path, "step5", "rank0.pt", "model.pt")) == "sharded"
    assert checkpoint_kind(_dir(tmp_path, "step6", "model/", "model.safetensors")) == "sharded"


def test_a_checkpoint_name_without_files_goes_by_its_name(tmp_path: Path) -> None:
    # So that its reader says what is missing, as upstream's would.
    assert checkpoint_kind(_dir(tmp_path, "step3-unsharded")) == "unsharded"
    assert checkpoint_kind(_dir(tmp_path, "step3")) == "sharded"
    assert checkpoint_kind(_dir(tmp_path, "notes")) is None
    assert checkpoint_kind(tmp_path / "missing") is None


def test_hf_quantized_and_adapter(tmp_path: Path) -> None:
    hf = _dir(tmp_path, "hf", "model.safetensors")
    (hf / "config.json").write_text(json.dumps({"model_type": "olmo"}))
    assert checkpoint_kind(hf) == "hf"
    (hf / "config.json").write_text(json.dumps({"not": "a model config"}))
    assert checkpoint_kind(hf) == "unsharded"  # a config.json without model_type is not HF's
    assert checkpoint_kind(_dir(tmp_path, "q", "quantization.json", "quantized.safetensors")) == "quantized"
    adapter_dir = _dir(tmp_path, "lora", "adapter.safetensors")
    assert checkpoint_kind(adapter_dir) == "adapter"
    assert checkpoint_kind(adapter_dir / "adapter.safetensors") == "adapter"
    assert checkpoint_kind(adapter_dir / "config.yaml") is None


def test_a_run_folder_is_its_latest_checkpoint(tmp_path: Path) -> None:
    run = _dir(tmp_path, "run", "config.yaml", "adapter.safetensors")  # a LoRA run folder
    _dir(run, "step2-unsharded", "model.safetensors")
    _dir(run, "step4", "model_and_optim/")
    found = locate_checkpoint(run)
    assert (found.path, found.kind) == (run / "step4", "sharded")
    assert locate_checkpoint(run / "step2-unsharded").kind == "unsharded"
    lone = _dir(tmp_path, "lone", "adapter.safetensors")  # no checkpoints: the adapter itself
    assert locate_checkpoint(lone).kind == "adapter"


def test_neither_checkpoint_nor_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        locate_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        locate_checkpoint(_dir(tmp_path, "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        locate_checkpoint(tmp_path / "file.txt")
