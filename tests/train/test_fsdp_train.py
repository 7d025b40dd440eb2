"""End to end through the CLI: `olmo train --nproc-per-node 2` (torchrun, gloo, FSDP2) reproduces the
1-process losses for the same global batch, and its sharded checkpoint resumes in 1 process with the
losses of the run that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.train._helpers import olmo_process

TINY = {
    "model.d_model": 32,
    "model.n_heads": 4,
    "model.n_layers": 2,
    "model.vocab_size": 60,
    "model.embedding_size": 64,
    "model.max_sequence_length": 16,
    "precision": "fp32",
    "global_train_batch_size": 4,
    "device_train_microbatch_size": 1,  # 4 micro-batches on 1 process, 2 per rank on 2
    "max_duration": 6,
    "stop_at": 6,
    "save_interval": 3,
    "scheduler.t_warmup": 2,
    "optimizer.learning_rate": 0.01,
}


def losses(run_dir: Path) -> dict[int, float]:
    found = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/CrossEntropyLoss" in record:
            found[record["step"]] = record["train/CrossEntropyLoss"]
    return found


@pytest.mark.slow
def test_two_process_training_equals_one_process_and_resumes_in_one(tmp_path):
    data = tmp_path / "tokens.npy"
    # 64 instances of 16 tokens (even, so the world-size truncation of the data order changes nothing),
    # a learnable sequence so that the loss falls within the few steps.
    ((np.arange(64 * 16) * 7) % 60).astype("<u2").tofile(data)
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    common = ["--preset", "tiny", "--data", str(data), "--no-wandb", "--device", "cpu", *sets]

    olmo_process(
        "train", *common, "--save-folder", str(tmp_path / "two"), "--nproc-per-node", "2", cwd=tmp_path
    )
    olmo_process("train", *common, "--save-folder", str(tmp_path / "one"), cwd=tmp_path)

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    assert one[6] < one[1]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    # Two processes wrote sharded checkpoints, one rank file each.
    assert sorted(p.name for p in (tmp_path / "two" / "step3" / "train").iterdir()) == [
        "rank0.pt",
        "rank1.pt",
    ]

    olmo_process(
        "resume",
        str(tmp_path / "resumed"),
        "--load-path",
        str(tmp_path / "two" / "step3"),
        "--no-wandb",
        cwd=tmp_path,
    )
    resumed = losses(tmp_path / "resumed")
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step] == pytest.approx(one[step], abs=1e-5), step
