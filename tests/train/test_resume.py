"""Resuming: a run stopped and continued has exactly the losses of one that never stopped (CPU), an
upstream-layout checkpoint loads, and a checkpoint that does not fit the config is refused by name."""

from __future__ import annotations

import base64
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.olmo import build_model
from olmo_cli.train.state import TrainerState
from tests.checkpoint._upstream import write_upstream_safetensors
from tests.train._runs import losses, metrics, quiet_run, run_config

FSDP = "_fsdp_wrapped_module."


def _resume(cfg: TrainConfig, checkpoint: Path, **updates) -> None:
    quiet_run(cfg.model_copy(update={"load_path": str(checkpoint), **updates}), continuing=True)


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_stop_and_resume_gives_the_uninterrupted_losses(tmp_path, precision):
    whole = run_config(tmp_path / "whole", precision=precision, stop_at=6)
    quiet_run(whole)
    split = run_config(tmp_path / "split", precision=precision, stop_at=3)
    result, _ = quiet_run(split)
    assert result.step == 3
    _resume(split, result.checkpoint, stop_at=6)

    expected, found = losses(tmp_path / "whole" / "run"), losses(tmp_path / "split" / "run")
    assert list(found) == [1, 2, 3, 4, 5, 6]
    assert found == expected  # exact: same weights, moments, LR, data position
    by_step = {r["step"]: r for r in metrics(tmp_path / "split" / "run")}
    for record in metrics(tmp_path / "whole" / "run"):
        assert by_step[record["step"]]["optim/total_grad_norm"] == record["optim/total_grad_norm"]
        assert by_step[record["step"]]["lr"] == record["lr"]
    final_whole = read_unsharded(tmp_path / "whole" / "run" / "step6-unsharded")
    final_split = read_unsharded(tmp_path / "split" / "run" / "step6-unsharded")
    for name, tensor in final_whole.model.items():
        assert torch.equal(final_split.model[name], tensor), name


def test_resume_drops_metrics_of_steps_after_the_checkpoint(tmp_path):
    cfg = run_config(tmp_path, stop_at=5)
    quiet_run(cfg)  # checkpoints at 3 and 5
    _resume(cfg, tmp_path / "run" / "step3-unsharded", stop_at=6)
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def _upstream_checkpoint(ours: Path, target: Path) -> Path:
    """Re-writes one of our checkpoints the way upstream OLMo writes `step{N}-unsharded/`: FSDP1 parameter
    names, base64-pickled safetensors keys, optimizer state keyed by names, and a train.pt holding pathlib
    paths and the legacy NumPy RNG tuple."""
    ckpt = read_unsharded(ours)
    target.mkdir(parents=True)
    (target / "config.yaml").write_text((ours / "config.yaml").read_text())

    def fsdp(name: str) -> str:  # FSDP1 wrapped the root and every block
        return FSDP + re.sub(r"(blocks\.\d+\.)", rf"\1{FSDP}", name)

    write_upstream_safetensors(target / "model.safetensors", {fsdp(k): v for k, v in ckpt.model.items()})
    groups = []
    for group in ckpt.optim["param_groups"]:
        names = [fsdp(n) for n in group["param_names"]]
        groups.append({**group, "params": names, "param_names": names})
    optim = {"state": {fsdp(k): v for k, v in ckpt.optim["state"].items()}, "param_groups": groups}
    write_upstream_safetensors(target / "optim.safetensors", optim, protocol=2)
    trainer = ckpt.trainer
    torch.save(
        {
            "epoch": 0,
            "global_step": trainer["global_step"],
            "global_train_examples_seen_this_epoch": trainer["global_train_examples_seen_this_epoch"],
            "global_train_tokens_seen": trainer["global_train_tokens_seen"],
            "world_size": 1,
            "checkpoints": [],
            "unsharded_checkpoints": [Path("/upstream/run") / target.name],
            "ephemeral_checkpoints": [],
            "rng": {
                "python": trainer["rng"]["python"],
                "numpy": np.random.RandomState(5).get_state(),
                "torch": trainer["rng"]["torch"],
            },
        },
        target / "train.pt",
    )
    return target


def test_an_upstream_layout_checkpoint_resumes_exactly(tmp_path):
    whole = run_config(tmp_path / "whole", stop_at=6)
    quiet_run(whole)
    upstream = _upstream_checkpoint(
        tmp_path / "whole" / "run" / "step3-unsharded", tmp_path / "up" / "step3-unsharded"
    )
    keys = safetensors.torch.load_file(upstream / "model.safetensors")
    assert all(k.startswith("gA") for k in keys)  # really upstream's encoded names, not plain ones
    assert pickle.loads(base64.urlsafe_b64decode(next(iter(keys))))[0][0].startswith(FSDP)

    continued = run_config(tmp_path / "continued", stop_at=6)
    _resume(continued, upstream)
    expected, found = losses(tmp_path / "whole" / "run"), losses(tmp_path / "continued" / "run")
    assert list(found) == [4, 5, 6]
    assert found == {step: expected[step] for step in (4, 5, 6)}


def test_a_checkpoint_that_does_not_fit_the_config_names_keys_and_shapes(tmp_path):
    cfg = run_config(tmp_path, stop_at=3)
    quiet_run(cfg)
    wider = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_model": 64})})
    with pytest.raises(CheckpointError) as info:
        _resume(wider, tmp_path / "run" / "step3-unsharded", stop_at=4)
    text = str(info.value)
    assert "does not fit the model config" in text
    assert "transformer.wte.weight: checkpoint [64, 32], model [64, 64]" in text
    assert info.value.hint


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    cfg = run_config(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        _resume(cfg, tmp_path / "nope" / "step3-unsharded")


def test_weights_only_restart_resets_the_trainer_state(tmp_path):
    cfg = run_config(tmp_path, stop_at=3)
    quiet_run(cfg)
    second = run_config(tmp_path / "b", stop_at=2)
    quiet_run(
        second.model_copy(
            update={
                "load_path": str(tmp_path / "run" / "step3-unsharded"),
                "reset_trainer_state": True,
                "reset_optimizer_state": True,
            }
        )
    )
    # Counting starts over, from the loaded weights (a lower loss than a fresh model's first step).
    assert list(losses(tmp_path / "b" / "run")) == [1, 2]
    assert losses(tmp_path / "b" / "run")[1] < losses(tmp_path / "run")[1]
    weights = read_unsharded(tmp_path / "run" / "step3-unsharded").model
    assert set(weights) == set(build_model(cfg.model, "meta").state_dict())


# ---- upstream's restore rules for the trainer state (docs/format.md §4.7) ---------------------------


def _saved(**changes):
    state = {
        "epoch": 1,
        "global_step": 10,
        "global_train_examples_seen_this_epoch": 40,
        "global_train_tokens_seen": 5000,
        "world_size": 2,
        "rng": {"torch": torch.get_rng_state()},
    }
    return {**state, **changes}


def test_restore_rules(tmp_path):
    cfg = run_config(tmp_path)
    state, rng = TrainerState.restored(_saved(), cfg, world_size=2)
    assert (state.epoch, state.global_step, state.examples_seen, state.tokens_seen) == (1, 10, 40, 5000)
    assert rng  # same world size: RNG restored
    assert TrainerState.restored(_saved(), cfg, world_size=4)[1] is False

    fresh, _ = TrainerState.restored(_saved(), cfg.model_copy(update={"restore_dataloader": False}), 2)
    assert (fresh.epoch, fresh.global_step, fresh.examples_seen, fresh.tokens_seen) == (0, 0, 0, 0)
    new_epoch, _ = TrainerState.restored(_saved(), cfg.model_copy(update={"epoch": 2}), 2)
    assert (new_epoch.epoch, new_epoch.examples_seen, new_epoch.global_step) == (2, 0, 10)
    skipped, _ = TrainerState.restored(_saved(), cfg.model_copy(update={"fast_forward_batches": 3}), 2)
    assert skipped.examples_seen == 40 + 3 * cfg.global_train_batch_size
    assert skipped.tokens_seen == 5000  # fast-forwarding skips data, not tokens
