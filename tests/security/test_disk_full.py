"""Disk full in the checkpoint writers: a save during training, convert-hf and quantize each end with one
message naming the path and the space needed (exit 4), leave no partial directory to keep the disk
full, and work (resume included) once space is freed. On a real nearly full tmpfs where one can be
mounted; the sharded writer, which needs several processes for a real run, gets an injected ENOSPC."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from tests.security._full_disk import olmo_on_full_disk, tmpfs_unavailable

CHECKPOINT_BYTES = 300_000  # the few-thousand-parameter model's step directory (model, optim, train.pt)


@pytest.fixture
def tmpfs() -> None:
    why_not = tmpfs_unavailable()
    if why_not is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why_not}); test_sharded_save_* injects ENOSPC instead")


def _one_error(result: dict, code: int, *needles: str) -> str:
    text = result["stdout"] + result["stderr"]
    assert result["rc"] == code, text
    assert "Traceback" not in text, text
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text
    for needle in needles:
        assert needle in text, text
    return text


def test_a_save_during_training_on_a_full_disk_then_resume(checkpoint, tmp_path, tmpfs):
    config = checkpoint.parent / "config.yaml"
    train = ["train", "--config", str(config), "-o", "{mnt}/run", "--set", "load_path=null"]
    train += ["--set", "max_duration=4", "--set", "stop_at=4", "--set", "save_interval=2"]
    # Room for the first checkpoint (step 2) and not the second.
    report = olmo_on_full_disk(tmp_path, [train], [["resume", "{mnt}/run"]], free=int(1.5 * CHECKPOINT_BYTES))
    text = _one_error(report["before"][0], 4, "no space left on the device", "step4-unsharded", "needs about")
    assert "free" in text
    full = report["full"]
    assert "run/step2-unsharded" in full and not any("-tmp" in name or ".tmp" in name for name in full), full
    assert not any(name.startswith("run/step4") for name in full), full
    resumed = report["after"][0]
    assert resumed["rc"] == 0, resumed["stdout"] + resumed["stderr"]
    assert "run/step4-unsharded" in report["final"]


@pytest.mark.parametrize("command", ["convert-hf", "quantize"])
def test_convert_and_quantize_on_a_full_disk(checkpoint, tmp_path, tmpfs, command):
    argv = {
        "convert-hf": ["convert-hf", str(checkpoint), "--output", "{mnt}/out"],
        "quantize": ["quantize", str(checkpoint), "--method", "int8", "--output", "{mnt}/out"],
    }[command]
    report = olmo_on_full_disk(tmp_path, [argv], [argv], free=20_000)
    _one_error(report["before"][0], 4, "no space left on the device", "out", "needs about")
    assert report["full"] == [".filler"], report["full"]  # nothing partial left behind
    again = report["after"][0]
    assert again["rc"] == 0, again["stdout"] + again["stderr"]
    assert any(name.startswith("out/") for name in report["final"])


def test_sharded_save_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    """The DCP writer's own files fail with ENOSPC (injected): one CheckpointError, no -tmp directory."""
    import torch

    from olmo_cli.checkpoint import sharded
    from olmo_cli.errors import CheckpointError
    from olmo_cli.world import init_world
    from tests.train import _dist_worker as worker

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    world = init_world("cpu")
    model, optim = worker.build(worker.tiny_config(), world)

    def full(obj, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sharded, "_torch_save", full)
    state = {"global_step": 1, "rng": {"torch": torch.get_rng_state()}}
    with pytest.raises(CheckpointError, match="no space left on the device while writing .*step1"):
        sharded.write_sharded(
            tmp_path / "step1", model=model, optim=optim, trainer_state=state, config_yaml="", world=world
        )
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
