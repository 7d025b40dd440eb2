"""A downloaded checkpoint is directly usable: it reads back bit-identical to what was served, and the
other commands take its directory as it is (the download through the installed `olmo`, the commands
after it through `main` in this process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded, write_unsharded
from olmo_cli.config.yamlio import dump_yaml
from olmo_cli.model.olmo import build_model
from tests._fixtures import tiny_config
from tests._http_server import Server
from tests.cli._helpers import run_olmo_here

from ._helpers import add_checkpoint, add_index, run_cli

TINY_OVERRIDES = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=2",
    "model.max_sequence_length=16",
    "global_train_batch_size=4",
    "device_train_microbatch_size=4",
]


def tiny_checkpoint(directory: Path, step: int = 2) -> Path:
    """A real checkpoint in the upstream layout: a tiny model after `step` AdamW steps."""
    cfg = tiny_config(*TINY_OVERRIDES)
    model = build_model(cfg.model, seed=0)
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-5)
    tokens = torch.randint(0, cfg.model.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(step):
        model(tokens).float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    trainer = {
        "epoch": 0,
        "global_step": step,
        "global_train_examples_seen_this_epoch": 4 * step,
        "global_train_tokens_seen": 4 * 16 * step,
        "world_size": 1,
        "checkpoints": [],
        "unsharded_checkpoints": [],
        "ephemeral_checkpoints": [],
        "rng": {"torch": torch.get_rng_state()},
    }
    config_yaml = dump_yaml(cfg.model_dump(mode="json"))
    target = directory / f"step{step}-unsharded"
    return write_unsharded(target, model.state_dict(), optimizer.state_dict(), trainer, config_yaml)


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
    server: Server, tmp_path: Path
) -> None:
    source = tiny_checkpoint(tmp_path / "source")
    index = serve_directory(server, source, 2)
    dest = tmp_path / "dest"
    proc = run_cli("download", "--index", index, "--step", "2", "-o", str(dest), "-q", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    downloaded = dest / "step2-unsharded"
    model_config = tiny_config(*TINY_OVERRIDES).model
    want = read_unsharded(source, model_config=model_config)
    got = read_unsharded(downloaded, model_config=model_config)
    assert_same(got.model, want.model)
    assert_same(got.optim["state"], want.optim["state"])
    assert got.step == 2 and got.config_text == want.config_text

    converted = run_olmo_here("convert-hf", str(downloaded), "-o", str(tmp_path / "hf"))
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_downloaded_checkpoint_resumes_training(server: Server, tmp_path: Path) -> None:
    index = serve_directory(server, tiny_checkpoint(tmp_path / "source"), 2)
    proc = run_cli("download", "--index", index, "--latest", "-o", str(tmp_path / "dl"), "-q", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    downloaded = tmp_path / "dl" / "step2-unsharded"
    tokens = tmp_path / "tokens.npy"
    np.random.default_rng(0).integers(0, 4096, 4 * 17 * 10, dtype=np.uint16).tofile(tokens)
    resumed = run_olmo_here(
        *("resume", str(tmp_path / "run"), "--load-path", str(downloaded), "--set", f"data.paths=[{tokens}]"),
        *("--set", "stop_at=4", "--no-wandb", "--device", "cpu", "--json"),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "run_started")
    assert started["start_step"] == 2 and started["resumed_from"] == str(downloaded)
    assert [e["step"] for e in events if e["event"] == "step"] == [3, 4]
    assert (tmp_path / "run" / "step4-unsharded" / "model.safetensors").is_file()
