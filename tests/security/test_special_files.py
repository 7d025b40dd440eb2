"""Small files from elsewhere that are not files: a FIFO would block the open forever and a device such as
/dev/zero never ends. Configs, manifests, indexes and a checkpoint's JSON files are each refused as one
message, in bounded time."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.security._checkpoints import assert_one_error, olmo


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_config_that_is_not_a_file(tmp_path, kind):
    _special(tmp_path / "config.yaml", kind)
    started = time.monotonic()
    proc = olmo("presets", "show", "--config", str(tmp_path / "config.yaml"), cwd=tmp_path)
    assert_one_error(proc, 2, "config.yaml")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_manifest_that_is_not_a_file(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-00000.npy").write_bytes(b"\0" * 64)
    _special(data / "manifest.json", kind)
    started = time.monotonic()
    proc = olmo("data", "inspect", str(data), cwd=tmp_path)
    # Not a file, so not a manifest: the directory is read as plain token files, without a hang.
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "Token data: 1 file(s)" in proc.stdout and time.monotonic() - started < 30


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_hf_json_files_that_are_not_files(checkpoint, tmp_path, name):
    from olmo_cli.convert.export import export_hf
    from olmo_cli.load.read import read_checkpoint

    hf = tmp_path / "hf"
    export_hf(read_checkpoint(checkpoint), None, hf, max_shard_bytes=20_000)
    if name == "config.json":  # as garbage that is still a file: the directory reads as not HF
        (hf / name).unlink()
        _special(hf / name, "dev-zero")
        expected = "config.json"
    else:
        assert json.loads((hf / name).read_text())
        (hf / name).unlink()
        _special(hf / name, "fifo")
        expected = "has no weights"  # a FIFO is not an index file: never opened, so nothing blocks
    proc = olmo("convert-hf", "--from-hf", str(hf), "--output", str(tmp_path / "back"), cwd=tmp_path)
    assert_one_error(proc, 4, expected)
