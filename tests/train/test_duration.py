"""Run length from `max_duration` and the stop step (docs/format.md §6.4, §6.6)."""

from __future__ import annotations

import pytest

from olmo_cli.train import duration
from olmo_cli.train.duration import (
    max_epochs,
    max_steps,
    max_tokens,
    scheduler_max,
    scheduler_position,
    stop_reason,
    stop_step,
)
from olmo_cli.train.schedule import lr_at
from tests._fixtures import preset

TOKENS_PER_STEP = 4_194_304


def test_integer_steps():
    cfg = preset("1b")
    assert max_steps(cfg) == 739_328
    assert max_steps(cfg, tokens_seen=10**12, global_step=200_000) == 739_328
    # ≈3.1T tokens, as the 1B run is described.
    assert max_tokens(cfg) == 739_328 * TOKENS_PER_STEP == 3_100_966_387_712
    assert max_tokens(cfg, tokens_seen=5, global_step=739_000) == 5 + 328 * TOKENS_PER_STEP
    assert max_tokens(cfg, tokens_seen=5, global_step=800_000) == 5
    assert max_steps(preset("1b", max_duration="1e4")) == 10_000


def test_token_budget_7b():
    cfg = preset("7b")
    assert cfg.max_duration == "2e12T" and cfg.tokens_per_step == TOKENS_PER_STEP
    assert max_steps(cfg) == 476_838  # ceil(2e12 / 4,194,304): the last step may overshoot
    # Resumed mid-run with the same batch: the end does not move.
    assert max_steps(cfg, tokens_seen=100_000 * TOKENS_PER_STEP, global_step=100_000) == 476_838
    # Resumed after the batch size was halved: 1,580,569,600,000 tokens left at 2,097,152 a step.
    halved = preset("7b", global_train_batch_size=1024)
    assert max_steps(halved, 100_000 * TOKENS_PER_STEP, 100_000) == 100_000 + 753_675
    # Past the budget: nothing left to do.
    assert max_steps(cfg, tokens_seen=3 * 10**12, global_step=715_000) == 715_000
    assert max_tokens(cfg, tokens_seen=123, global_step=7) == 2 * 10**12


def test_7b_schedule_uses_the_derived_maximum():
    cfg = preset("7b")
    lr = lr_at(240_919, cfg.scheduler, cfg.optimizer.learning_rate, scheduler_max(cfg))
    assert lr == pytest.approx(1.65e-4, rel=1e-12)  # exactly halfway down the linear decay


def test_epochs_need_the_data_size():
    cfg = preset("7b-0424")
    assert cfg.max_duration == "2ep"
    steps_per_epoch = 1_000_000 // cfg.global_train_batch_size  # 976 batches of 1024 instances
    assert max_steps(cfg, steps_per_epoch=steps_per_epoch) == 1952
    assert max_tokens(cfg, steps_per_epoch=steps_per_epoch) == 1952 * TOKENS_PER_STEP
    assert scheduler_max(cfg, steps_per_epoch=steps_per_epoch) == 1952 * TOKENS_PER_STEP
    with pytest.raises(ValueError, match="2 epochs needs the data's steps per epoch"):
        max_steps(cfg)


def test_max_epochs():
    assert max_epochs(1952, 976) == 2
    assert max_epochs(1953, 976) == 3
    assert max_epochs(10, 0) == 0


def test_scheduler_units():
    steps, tokens = preset("7b"), preset("7b-0424")
    assert scheduler_position(steps, global_step=3, tokens_seen=3 * TOKENS_PER_STEP) == 3
    assert scheduler_position(tokens, global_step=3, tokens_seen=3 * TOKENS_PER_STEP) == 3 * TOKENS_PER_STEP
    assert scheduler_max(steps) == 476_838


def test_stop_step():
    cfg = preset("1b")
    assert stop_step(cfg, global_step=0, total_steps=739_328) == 739_338  # 10 extra steps at the final LR
    assert stop_step(preset("1b", stop_after=5), global_step=100, total_steps=739_328) == 105
    assert stop_step(preset("1b", stop_at=50), global_step=0, total_steps=739_328) == 50
    assert stop_step(preset("1b", stop_at=50, stop_after=100), global_step=0, total_steps=739_328) == 50
    assert stop_step(preset("1b", stop_at=500, stop_after=100), global_step=10, total_steps=739_328) == 110


def test_the_stop_reason_names_what_decides_the_stop_step():
    assert stop_reason(preset("1b"), 0, 739_328) == (
        "max_duration=739328, then 10 more at the final LR as upstream trains "
        "(--set stop_at=739328 stops at the schedule's end)"
    )
    tokens = preset("1b", max_duration="2e12T")
    assert stop_reason(tokens, 0, max_steps(tokens)).startswith("max_duration=2e12T = 476838 steps, then 10")
    assert stop_reason(preset("1b", stop_at=50), 0, 739_328) == (
        "stop_at=50 (the schedule of max_duration=739328 ends at step 739328)"
    )
    assert stop_reason(preset("1b", stop_at=500, stop_after=100), 10, 739_328) == (
        "stop_after=100 steps from step 10"
    )


def test_data_runs_out_counts_what_is_left_from_the_position_resumed_at():
    # 8 batches per epoch, 2 epochs: resumed at step 12 (epoch 1, 4 batches into it) the data ends at 16.
    text = duration.data_runs_out(12, 26, 8, 2, epoch=1, batches_done=4)
    assert text is not None and text.startswith("the data runs out after step 16, before the stop step 26")
    assert duration.data_runs_out(12, 16, 8, 2, epoch=1, batches_done=4) is None
    assert "1 epoch," in duration.data_runs_out(0, 18, 8, 1)
