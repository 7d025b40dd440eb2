"""Damaged and hostile checkpoint files: a truncated newest checkpoint names itself and the one to use
instead; a legacy-format pickle is refused naming the global it asked for; weight files are written
with the permissions the umask gives any file.

One refusal of each kind runs the installed `olmo` in a process of its own; the rest run its `main` in
this process (the same exit code and messages, without a second interpreter's import of torch)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from tests.cli._helpers import run_olmo_here
from tests.security._checkpoints import assert_one_error, olmo


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    from tests.train._runs import quiet_run, run_config

    root = tmp_path_factory.mktemp("two")
    cfg = run_config(root, max_duration=4, stop_at=4, save_interval=2)
    quiet_run(cfg)
    return root / "run"


def test_a_truncated_newest_checkpoint_names_its_step_and_suggests_the_previous(two_checkpoints, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run, symlinks=True)
    weights = run / "step4-unsharded" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    proc = olmo("resume", str(run), "--set", "stop_at=6", cwd=tmp_path)

    text = assert_one_error(proc, 4, "step4-unsharded", "previous checkpoint")
    assert str(run / "step2-unsharded") in text
    # The suggestion works as given.
    previous = str(run / "step2-unsharded")
    proc = run_olmo_here("resume", str(run), "--load-path", previous, "--set", "stop_at=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run_olmo_here("generate", str(run), "--prompt", "1 2", "--max-new-tokens", "2", cwd=tmp_path)
    assert_one_error(proc, 4, "step4-unsharded", "step3-unsharded")  # the resume above saved step 3


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2])  # torch writes legacy files with 2; it cannot read 4 there
@pytest.mark.parametrize("name", ["model.pt", "train.pt"])
def test_a_legacy_format_pickle_is_refused_naming_the_global(checkpoint, tmp_path, protocol, name):
    marker = tmp_path / "pwned"
    from olmo_cli.checkpoint.unsharded import read_unsharded

    # The same checkpoint in the legacy (pre-zip) torch format, with a payload in one file.
    honest = {
        "model.pt": read_unsharded(checkpoint, load_optim=False, load_trainer=False).model,
        "train.pt": torch.load(checkpoint / "train.pt", weights_only=False),
    }
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "optim.safetensors").unlink()
    for file, payload in honest.items():
        value = dict(payload, evil=_Payload(marker)) if file == name else payload
        torch.save(value, checkpoint / file, _use_new_zipfile_serialization=False, pickle_protocol=protocol)

    args = ("resume", str(checkpoint.parent), "--set", "stop_at=3")
    proc = olmo(*args, cwd=tmp_path) if name == "train.pt" else run_olmo_here(*args, cwd=tmp_path)

    assert_one_error(proc, 4, "system", "refused without running")
    assert not marker.exists()


def test_weight_files_get_the_umask_mode(checkpoint, tmp_path):
    expected = 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in checkpoint.iterdir() if p.is_file()}
    assert {"model.safetensors", "optim.safetensors"} <= modes.keys()
    assert all(mode == expected for mode in modes.values()), modes
    out = tmp_path / "hf"
    proc = run_olmo_here("convert-hf", str(checkpoint), "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == expected


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_invalid_setting_in_a_runs_config_is_the_checkpoints_fault_one_from_set_the_users(
    checkpoint, tmp_path
):
    config = checkpoint.parent / "config.yaml"
    good = config.read_text()
    config.write_text(good.replace("  n_layers: 2\n", "  n_layers: -2\n", 1))
    proc = run_olmo_here("resume", str(checkpoint.parent), "--set", "stop_at=3", cwd=tmp_path)
    assert_one_error(proc, 4, "model.n_layers", str(config))

    config.write_text(good)
    proc = run_olmo_here("resume", str(checkpoint.parent), "--set", "model.n_layers=-2", cwd=tmp_path)
    assert_one_error(proc, 2, "model.n_layers", "(from --set)")
