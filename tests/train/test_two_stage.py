"""OLMo 2's two-stage training: a stage-2 run starts from the last stage-1 checkpoint as upstream's
stage-2 configs say (load_path, restore_dataloader: false, no_pre_train_checkpoint, a new seed and data
mix, linear decay to 0 over a token budget), on a small model with the OLMo 2 block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.config.schema import DataConfig, SchedulerConfig
from olmo_cli.model.olmo import build_model
from tests._fixtures import small
from tests.train._runs import SEQ, metrics, pattern_tokens, quiet_run, run_config, write_token_dir

STAGE2_LR = 2e-3
STAGE2_STEPS = 5


def _stage1(tmp_path):
    cfg = run_config(tmp_path / "s1", model=small("olmo2-tiny").model, softmax_auxiliary_loss=True)
    result, _ = quiet_run(cfg)
    assert result.step == 6
    return cfg, result.checkpoint


def _stage2(tmp_path, checkpoint, **updates):
    mix = write_token_dir(tmp_path / "mix2", pattern_tokens(48 * SEQ, seed=7))  # a new data mix
    base = run_config(tmp_path / "s2", model=small("olmo2-tiny").model, softmax_auxiliary_loss=True)
    stage2 = {
        "seed": 42,
        "data": DataConfig(paths=[str(mix)], drop_last=True),
        "load_path": str(checkpoint),
        "restore_dataloader": False,
        "no_pre_train_checkpoint": True,
        "optimizer": base.optimizer.model_copy(update={"learning_rate": STAGE2_LR}),
        "scheduler": SchedulerConfig(name="linear_with_warmup", t_warmup=0, alpha_f=0),
        "max_duration": f"{STAGE2_STEPS * 8 * SEQ}T",  # a token budget, as upstream's 50e9T
        "stop_at": STAGE2_STEPS + 1,  # as upstream's stop_at 11931: past the budget, at the final LR
        "save_interval": STAGE2_STEPS,
    }
    return base.model_copy(update={**stage2, **updates})


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two_stage")
    stage1, checkpoint = _stage1(tmp_path)
    stage2 = _stage2(tmp_path, checkpoint)
    result, _ = quiet_run(stage2)
    return tmp_path, stage1, checkpoint, stage2, result


def test_stage2_starts_over_in_steps_and_data_from_stage1s_weights(stages):
    tmp_path, _, checkpoint, stage2, result = stages
    records = metrics(tmp_path / "s2" / "run")
    assert [r["step"] for r in records] == list(range(1, STAGE2_STEPS + 2))
    assert result.step == STAGE2_STEPS + 1
    # The first batch is the new mix's under the new seed: PCG64(42)'s permutation of its 48 instances.
    tokens = np.fromfile(tmp_path / "mix2" / "part-00000.npy", dtype="<u2").astype(np.int64)
    instances = tokens.reshape(-1, SEQ)
    batch = torch.from_numpy(instances[np.random.default_rng(42).permutation(48)[:8]])
    model = build_model(stage2.model, "cpu")
    model.load_state_dict(read_unsharded(checkpoint, load_optim=False, load_trainer=False).model)
    logits = model(batch).float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    )
    assert records[0]["train/CrossEntropyLoss"] == pytest.approx(ce.item() * (SEQ - 1) / SEQ, rel=1e-5)
    assert "train/ZLoss" in records[0]


def test_stage2_decays_linearly_to_zero_over_its_token_budget(stages):
    tmp_path = stages[0]
    lrs = [r["lr"] for r in metrics(tmp_path / "s2" / "run")]
    # upstream's linear_with_warmup at t_warmup 0, alpha_f 0: lr * (1 - step / t_max), t_max = 5 steps,
    # then the final LR (0) for the step past the budget
    expected = [STAGE2_LR * (1 - step / STAGE2_STEPS) for step in range(1, STAGE2_STEPS + 1)] + [0.0]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_stage2_keeps_stage1s_adam_moments_unless_told_to_reset(stages, tmp_path):
    # Upstream's stage-2 configs set no reset_optimizer_state, so the moments of step 6 carry on.
    _, _, checkpoint, stage2, _ = stages
    start = read_unsharded(checkpoint).optim["state"]
    end = read_unsharded(stage2.save_folder + f"/step{STAGE2_STEPS}-unsharded").optim["state"]
    name = "transformer.blocks.0.att_proj.weight"
    assert int(start[name]["step"]) == 6
    assert int(end[name]["step"]) == 6 + STAGE2_STEPS
    reset = _stage2(tmp_path, checkpoint, reset_optimizer_state=True)
    quiet_run(reset)
    fresh = read_unsharded(reset.save_folder + f"/step{STAGE2_STEPS}-unsharded").optim["state"]
    assert int(fresh[name]["step"]) == STAGE2_STEPS


def test_the_soup_of_three_stage2_ingredients_is_their_average(stages, tmp_path):
    # As OLMo 2's final models: stage 2 run three times from one stage-1 checkpoint (seeds 42, 43, 44),
    # then the plain average of the three last checkpoints.
    from tests.cli._helpers import run_olmo_here

    _, _, checkpoint, stage2, result = stages
    finals = [result.checkpoint]
    for seed in (43, 44):
        ingredient = _stage2(tmp_path / f"seed{seed}", checkpoint, seed=seed)
        finals.append(quiet_run(ingredient)[0].checkpoint)
    out = run_olmo_here("soup", *map(str, finals), "--output", str(tmp_path / "soup"))
    assert out.returncode == 0, out.stderr
    soup = read_unsharded(tmp_path / "soup").model
    states = [read_unsharded(path).model for path in finals]
    assert not torch.equal(states[0]["transformer.wte.weight"], states[1]["transformer.wte.weight"])
    for name in states[0]:
        expected = (sum(state[name].double() for state in states) / 3).float()
        assert torch.equal(soup[name], expected), name
