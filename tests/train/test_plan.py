"""The dry-run plan against numbers worked out by hand from the presets' shapes (not from the formulas
in config/derived.py that the plan itself uses), and the peak FLOP/s it and the trainer time a run
against."""

from __future__ import annotations

import json
import math

import pytest
import torch

from olmo_cli.errors import ConfigError
from olmo_cli.train import speed
from olmo_cli.train.plan import batch_split, count_parameters_on_meta, make_plan
from tests._fixtures import preset

# OLMo-7B: d 4096, 32 layers, fused MLP 22016 (SwiGLU halves it to 11008), vocab 50304, untied, no biases.
# One block: att_proj 4096*3*4096 + attn_out 4096*4096 + ff_proj 4096*22016 + ff_out 11008*4096.
BLOCK_7B = 4096 * (3 * 4096 + 4096 + 22016 + 11008)
EMB_7B = 50304 * 4096
PARAMS_7B = 32 * BLOCK_7B + 2 * EMB_7B  # wte and the untied ff_out
# tiny: d 256, 4 layers, fused MLP 1024 (512 after SwiGLU), vocab 4096, tied.
BLOCK_TINY = 256 * 768 + 256 * 256 + 256 * 1024 + 512 * 256
PARAMS_TINY = 4 * BLOCK_TINY + 4096 * 256


def test_7b_plan_by_hand():
    plan = make_plan(preset("7b"), world_size=8, mfu=0.4, peak_flops=989e12)
    assert PARAMS_7B == 6_888_095_744  # the published figure the issue names
    assert plan.params == PARAMS_7B
    assert plan.non_embedding_params == PARAMS_7B - EMB_7B  # upstream keeps the untied ff_out
    assert plan.tokens_per_step == 2048 * 2048
    assert (plan.device_batch_size, plan.grad_accum_steps) == (256, 128)  # 2048 / 8 ranks / micro 2
    assert plan.steps == 476_838  # ceil(2e12 / 4,194,304) = ceil(476,837.16)
    assert plan.train_steps == 476_848  # upstream runs 10 steps past the schedule
    assert plan.total_tokens == 476_848 * 4_194_304
    forward = 2 * (PARAMS_7B - EMB_7B) + 32 * 4 * 4096 * 2048
    backward = 4 * PARAMS_7B + 32 * 8 * 4096 * 2048
    assert plan.training_flops_per_token == forward + backward == 44_137_709_568
    assert plan.training_flops == pytest.approx(44_137_709_568 * 476_848 * 4_194_304, rel=1e-12)
    expected_seconds = 44_137_709_568 * 476_848 * 4_194_304 / (0.4 * 989e12 * 8)
    assert plan.seconds == pytest.approx(expected_seconds, rel=1e-12)
    assert 300 < plan.seconds / 86400 < 350  # about 10 months on 8 H100s: a sanity anchor


def test_7b_memory_shards_states_not_activations():
    one = make_plan(preset("7b", device_train_microbatch_size=2), world_size=1).memory
    eight = make_plan(preset("7b"), world_size=8).memory
    assert eight.params == 4 * PARAMS_7B // 8
    assert eight.grads == 4 * PARAMS_7B // 8
    assert eight.optimizer == 8 * PARAMS_7B // 8
    assert one.params == 4 * PARAMS_7B
    assert eight.activations == one.activations and eight.logits == one.logits
    # One rank computes on a bf16 copy of the whole model; eight gather two units (block or root) at a time.
    assert one.gathered_params == 2 * PARAMS_7B
    assert eight.gathered_params == 2 * 2 * 2 * EMB_7B  # the root unit (wte + ff_out) is the largest
    assert eight.logits == 2 * 2048 * 50304 * (2 + 4)
    assert eight.total == sum(
        (eight.params, eight.grads, eight.optimizer, eight.gathered_params, eight.activations, eight.logits)
    )


def test_tiny_plan_by_hand():
    cfg = preset("tiny")
    plan = make_plan(cfg, world_size=1, peak_flops=1e12, mfu=0.5)
    assert PARAMS_TINY == 3_670_016
    assert plan.params == PARAMS_TINY
    assert plan.non_embedding_params == 4 * BLOCK_TINY
    assert plan.tokens_per_step == 8 * 256
    assert (plan.steps, plan.train_steps) == (300, 310)
    assert plan.total_tokens == 310 * 2048
    per_token = 2 * 4 * BLOCK_TINY + 4 * 4 * 256 * 256 + 4 * PARAMS_TINY + 8 * 4 * 256 * 256
    assert plan.training_flops_per_token == per_token == 23_068_672
    assert plan.seconds == pytest.approx(per_token * 310 * 2048 / 0.5e12)
    assert (plan.device_batch_size, plan.grad_accum_steps) == (8, 2)
    assert make_plan(cfg, world_size=2).grad_accum_steps == 1


def test_fp32_plan_has_no_bf16_copies_and_larger_activations():
    bf16 = make_plan(preset("tiny"), world_size=1).memory
    fp32 = make_plan(preset("tiny", precision="fp32"), world_size=1).memory
    assert fp32.gathered_params == 0 and bf16.gathered_params == 2 * PARAMS_TINY
    assert fp32.activations == 2 * bf16.activations
    assert fp32.logits == 4 * 256 * 4096 * 8  # one micro-batch: 4 x 256 positions


def test_count_parameters_on_meta_builds_the_real_model():
    assert count_parameters_on_meta(preset("7b").model) == PARAMS_7B
    assert count_parameters_on_meta(preset("tiny").model) == PARAMS_TINY  # tied: wte counted once


def test_unsupported_model_is_a_config_error():
    cfg = preset("tiny")
    model = cfg.model.model_copy(update={"alibi": True, "rope": False})
    with pytest.raises(ConfigError, match="alibi"):
        count_parameters_on_meta(model)


# The batch arithmetic below on a global batch of 32 in micro-batches of 16 (the preset's is 8 in one).
BATCH_32 = {"global_train_batch_size": 32, "device_train_microbatch_size": 16}


@pytest.mark.parametrize(
    ("world", "message"),
    [(3, "not divisible by the world size"), (4, "device_train_microbatch_size \\(16\\) does not divide")],
)
def test_batch_that_does_not_split_is_a_config_error(world, message):
    with pytest.raises(ConfigError, match=message) as info:
        batch_split(preset("tiny", **BATCH_32), world)
    assert info.value.hint


def test_microbatch_hint_names_a_divisor():
    with pytest.raises(ConfigError) as info:
        batch_split(preset("tiny", **{**BATCH_32, "device_train_microbatch_size": 12}), 1)  # 32 per rank
    assert "device_train_microbatch_size=8" in (info.value.hint or "")


def test_epoch_duration_needs_the_data_size():
    cfg = preset("tiny", max_duration="2ep", **BATCH_32)
    unknown = make_plan(cfg, world_size=1, peak_flops=1e12)
    assert unknown.steps is None and unknown.total_tokens is None and unknown.seconds is None
    assert "epochs" in (unknown.note or "")
    known = make_plan(cfg, world_size=2, dataset_instances=1001)
    # drop_last with 2 ranks keeps 1000 instances: 31 steps of 32 per epoch.
    assert known.steps == 2 * (1000 // 32) == 62
    assert known.note is None


def test_token_duration_rounds_steps_up():
    plan = make_plan(preset("tiny", max_duration="100000T"), world_size=1)
    assert plan.steps == math.ceil(100_000 / 2048) == 49


def test_as_dict_is_json():
    data = make_plan(preset("tiny"), world_size=1, peak_flops=2e12).as_dict()
    again = json.loads(json.dumps(data))
    assert again["params"] == PARAMS_TINY
    assert again["memory"]["total_bytes"] == sum(v for k, v in again["memory"].items() if k != "total_bytes")
    assert again["training_flops_per_token"] == 23_068_672


def test_mfu_out_of_range_is_refused():
    with pytest.raises(ConfigError):
        make_plan(preset("tiny"), world_size=1, mfu=0)


def test_the_peak_is_the_configured_figure_else_the_devices_in_the_compute_dtype(monkeypatch):
    asked = []
    monkeypatch.setattr(speed, "device_peak_flops", lambda device, dtype: asked.append(dtype) or (7e12, "x"))
    assert speed.run_peak_flops(preset("tiny", precision="amp_bf16"), "cpu") == (7e12, "x")
    assert speed.run_peak_flops(preset("tiny", precision=None), "cpu") == (7e12, "x")
    assert asked == [torch.bfloat16, torch.float32]
    assert speed.run_peak_flops(preset("tiny"), None) == (None, None)  # a device this machine lacks
    given = preset("tiny")
    given.speed_monitor.gpu_flops_available = 5e12
    assert speed.run_peak_flops(given, None) == (5e12, "speed_monitor.gpu_flops_available")
    assert len(asked) == 2
