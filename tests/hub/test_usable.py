"""A downloaded checkpoint (of the session's small trained run) is directly usable: it reads back
bit-identical to what was served, and the other commands take its directory as it is (the download
through the installed `olmo`, the commands after it through `main` in this process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from tests._fixtures import small
from tests._http_server import Server
from tests.cli._helpers import run_olmo_here

from ._helpers import add_checkpoint, add_index, run_cli


def serve_directory(server: Server, source: Path, step: int) -> str:
    add_checkpoint(server, step, {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()})
    return add_index(server, [step])


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want) and got.dtype == want.dtype
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same(got[key], want[key])
    else:
        assert got == want


def test_a_downloaded_checkpoint_reads_back_bit_identical_and_converts(
    server: Server, tmp_path: Path, small_run: Path
) -> None:
    source = small_run
    index = serve_directory(server, source, 2)
    dest = tmp_path / "dest"
    proc = run_cli("download", "--index", index, "--step", "2", "-o", str(dest), "-q", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    downloaded = dest / "step2-unsharded"
    model_config = small().model  # the model of the run that made `small_run`
    want = read_unsharded(source, model_config=model_config)
    got = read_unsharded(downloaded, model_config=model_config)
    assert_same(got.model, want.model)
    assert_same(got.optim["state"], want.optim["state"])
    assert got.step == 2 and got.config_text == want.config_text

    converted = run_olmo_here("convert-hf", str(downloaded), "-o", str(tmp_path / "hf"))
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_downloaded_checkpoint_resumes_training(server: Server, tmp_path: Path, small_run: Path) -> None:
    index = serve_directory(server, small_run, 2)
    proc = run_cli("download", "--index", index, "--latest", "-o", str(tmp_path / "dl"), "-q", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    downloaded = tmp_path / "dl" / "step2-unsharded"
    # On the data the run's config names (shared by the session, read only), two steps more.
    resumed = run_olmo_here(
        *("resume", str(tmp_path / "run"), "--load-path", str(downloaded), "--set", "max_duration=4"),
        *("--set", "stop_at=4", "--no-wandb", "--device", "cpu", "--json"),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["start_step"] == 2 and started["resumed_from"] == str(downloaded)
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]
    assert (tmp_path / "run" / "step4-unsharded" / "model.safetensors").is_file()
