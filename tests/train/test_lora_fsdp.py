"""LoRA under FSDP2: `olmo finetune --lora-rank R --nproc-per-node 2` (torchrun, gloo) shards the frozen
base and the trainable adapters in the same per-block units, trains to the 1-process losses and adapter,
and leaves the base bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from olmo_cli.checkpoint.layout import ADAPTER_FILE
from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.model.lora import is_adapter_name, read_adapter
from tests.train._finetune_data import base_checkpoint, chat_data
from tests.train._helpers import olmo_process


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["train/CrossEntropyLoss"] for r in map(json.loads, lines)}


@pytest.mark.slow
def test_lora_under_fsdp_matches_one_process_and_keeps_the_base(tmp_path):
    base = base_checkpoint(tmp_path / "base")
    data = chat_data(tmp_path / "chat", conversations=200)
    sets = {
        "max_duration": 4,
        "global_train_batch_size": 4,
        "device_train_microbatch_size": 1,  # gradient accumulation on both sides
        "optimizer.learning_rate": 1e-2,
        "save_interval": 1000,
        "save_interval_unsharded": 1000,  # the final checkpoint unsharded, gathered from the shards
    }
    args = ["finetune", "-k", str(base), "--data", str(data), "--lora-rank", "4", "--lora-dropout", "0"]
    args += ["--no-wandb", "--device", "cpu", "--json"]
    args += [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    olmo_process(*args, "--save-folder", str(tmp_path / "two"), "--nproc-per-node", "2", cwd=tmp_path)
    olmo_process(*args, "--save-folder", str(tmp_path / "one"), cwd=tmp_path)

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    a1, a2 = read_adapter(tmp_path / "one" / ADAPTER_FILE), read_adapter(tmp_path / "two" / ADAPTER_FILE)
    assert a1.tensors.keys() == a2.tensors.keys()
    for name, tensor in a1.tensors.items():
        torch.testing.assert_close(a2.tensors[name], tensor, atol=1e-5, rtol=0)
    assert a1.base_fingerprint == a2.base_fingerprint  # computed from the sharded model too
    start = read_unsharded(base).model
    final = read_unsharded(tmp_path / "two" / "step4-unsharded").model
    for name, tensor in final.items():
        if not is_adapter_name(name):
            assert torch.equal(tensor, start[name]), name
