"""LR and clip-threshold schedules against upstream's published check values (docs/format.md §6.3, §6.5)
and the shape each named schedule must have."""

from __future__ import annotations

import math

import pytest

from olmo_cli.config.schema import SchedulerConfig
from olmo_cli.train.schedule import BoltOnWarmup, grad_clip_threshold_at, lr_at, warmup_start_lr
from tests._fixtures import preset

from ._helpers import significant

TOKENS_PER_STEP = 4_194_304  # B·L of every OLMo-1 7B/1B preset: 2048 x 2048 and 1024 x 4096
SEVEN_B_MAX_STEPS = 476_838  # ceil(2e12 / B·L); derived from max_duration in test_duration.py


@pytest.mark.parametrize(
    ("t", "expected", "digits"),
    [(1, 4.018e-5, 4), (1000, 2.2e-4, 2), (2000, 4e-4, 1), (369_664, 2.2077e-4, 5), (739_328, 4e-5, 1)],
)
def test_olmo_1b_cosine_check_values(t, expected, digits):
    cfg = preset("1b")
    assert cfg.max_duration == 739_328
    lr = lr_at(t, cfg.scheduler, cfg.optimizer.learning_rate, 739_328)
    assert significant(lr, digits) == expected
    assert lr == pytest.approx(expected, rel=0.5 * 10 ** (1 - digits))


@pytest.mark.parametrize(
    ("t", "expected", "digits"), [(1, 3.0054e-5, 5), (5000, 3e-4, 1), (240_919, 1.65e-4, 3)]
)
def test_olmo_7b_linear_check_values(t, expected, digits):
    cfg = preset("7b")
    lr = lr_at(t, cfg.scheduler, cfg.optimizer.learning_rate, SEVEN_B_MAX_STEPS)
    assert significant(lr, digits) == expected


def test_olmo_7b_0424_counts_tokens_and_uses_t_max():
    cfg = preset("7b-0424")
    assert cfg.scheduler.units == "tokens" and cfg.tokens_per_step == TOKENS_PER_STEP
    # Optimizer step 100,000 runs at the tokens seen including its own batch.
    position = 100_000 * TOKENS_PER_STEP
    assert position == 419_430_400_000
    lr = lr_at(position, cfg.scheduler, cfg.optimizer.learning_rate, max_position=1)
    assert significant(lr, 5) == 2.8772e-4
    # t_max (3e12 tokens) is the horizon whatever the run maximum says.
    assert lr == lr_at(position, cfg.scheduler, cfg.optimizer.learning_rate, max_position=10**15)
    # Warmup is 2500 steps' worth of tokens: the first step is at 10% of peak plus 1/2500 of the rest.
    first = lr_at(TOKENS_PER_STEP, cfg.scheduler, 3e-4, 1)
    assert first == pytest.approx(3e-5 + 2.7e-4 / 2500, rel=1e-12)


def _sched(name: str, **kw: object) -> SchedulerConfig:
    return SchedulerConfig(name=name, t_warmup=100, alpha_f=0.1, **kw)


WARMUP_SCHEDULES = [
    "cosine_with_warmup",
    "linear_with_warmup",
    "inverse_sqrt_with_warmup",
    "max_scheduler",
    "cosine_linear_envelope",
    "constant_with_warmup",
]


@pytest.mark.parametrize("name", WARMUP_SCHEDULES)
def test_warmup_starts_at_ten_percent_and_reaches_peak(name):
    cfg = _sched(name)
    assert lr_at(0, cfg, 1.0, 1000) == pytest.approx(0.1)
    assert lr_at(50, cfg, 1.0, 1000) == pytest.approx(0.55)
    assert lr_at(100, cfg, 1.0, 1000) == pytest.approx(1.0)
    # warmup_min_lr replaces the 10% start.
    lower = _sched(name, warmup_min_lr=0.0)
    assert lr_at(0, lower, 1.0, 1000) == 0.0
    assert lr_at(25, lower, 1.0, 1000) == pytest.approx(0.25)


def test_warmup_min_lr_must_be_below_peak():
    with pytest.raises(ValueError, match="warmup_min_lr"):
        warmup_start_lr(_sched("cosine_with_warmup", warmup_min_lr=2.0), 1.0)
    with pytest.raises(ValueError, match="warmup_min_lr"):
        lr_at(5, _sched("linear_with_warmup", warmup_min_lr=1.0), 1.0, 1000)


@pytest.mark.parametrize("name", ["cosine_with_warmup", "linear_with_warmup", "cosine_linear_envelope"])
def test_decays_end_at_alpha_f_and_stay_there(name):
    cfg = _sched(name)
    values = [lr_at(t, cfg, 2.0, 1100) for t in range(100, 1300)]
    assert values[0] == pytest.approx(2.0)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert lr_at(1100, cfg, 2.0, 1100) == pytest.approx(0.2)
    assert lr_at(5000, cfg, 2.0, 1100) == pytest.approx(0.2)
    # t_max overrides the run maximum.
    assert lr_at(600, _sched(name, t_max=600), 2.0, 1100) == pytest.approx(0.2)


def test_midpoints_of_each_decay():
    # Halfway through decay (t = 600 of 100..1100): cosine and linear sit halfway between peak and floor;
    # the envelope multiplies the cosine term by the remaining fraction, 1/2.
    assert lr_at(600, _sched("cosine_with_warmup"), 1.0, 1100) == pytest.approx(0.55)
    assert lr_at(600, _sched("linear_with_warmup"), 1.0, 1100) == pytest.approx(0.55)
    assert lr_at(600, _sched("cosine_linear_envelope"), 1.0, 1100) == pytest.approx(0.1 + 0.5 * 0.45)
    quarter = 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2
    assert lr_at(350, _sched("cosine_with_warmup"), 1.0, 1100) == pytest.approx(quarter)


def test_inverse_sqrt_and_max_scheduler():
    inv = _sched("inverse_sqrt_with_warmup")
    assert lr_at(400, inv, 1.0, 1000) == pytest.approx(0.5)
    assert lr_at(10_000, inv, 1.0, 1000) == pytest.approx(0.1)
    mx = _sched("max_scheduler")
    cos = _sched("cosine_with_warmup")
    # Early in the decay the cosine is higher; past the horizon the cosine floor (0.1) loses to 1/sqrt.
    assert lr_at(300, mx, 1.0, 1000) == lr_at(300, cos, 1.0, 1000) > lr_at(300, inv, 1.0, 1000)
    assert lr_at(1000, mx, 1.0, 1000) == lr_at(1000, inv, 1.0, 1000) == pytest.approx(math.sqrt(0.1))
    with pytest.raises(ValueError, match="t_warmup > 0"):
        lr_at(5, SchedulerConfig(name="inverse_sqrt_with_warmup", t_warmup=0), 1.0, 1000)
    # Without warmup upstream's inverse-sqrt term is 0, so max_scheduler is the plain cosine.
    no_warmup = {"t_warmup": 0, "alpha_f": 0.1}
    for t in (0, 1, 500, 2000):
        assert lr_at(t, SchedulerConfig(name="max_scheduler", **no_warmup), 1.0, 1000) == lr_at(
            t, SchedulerConfig(name="cosine_with_warmup", **no_warmup), 1.0, 1000
        )


def test_constant_schedules():
    assert [lr_at(t, _sched("constant"), 0.3, 10) for t in (0, 1, 50, 10**9)] == [0.3] * 4
    cww = _sched("constant_with_warmup")
    assert lr_at(10**9, cww, 0.3, 10) == 0.3
    assert lr_at(0, cww, 0.3, 10) == pytest.approx(0.03)


def test_zero_warmup_goes_straight_to_the_decay():
    cfg = SchedulerConfig(name="cosine_with_warmup", t_warmup=0, alpha_f=0.0)
    assert lr_at(0, cfg, 1.0, 100) == 1.0
    assert lr_at(50, cfg, 1.0, 100) == pytest.approx(0.5)
    assert lr_at(100, cfg, 1.0, 100) == 0.0


def test_grad_clip_threshold_schedule():
    cfg = preset("7b")
    base = cfg.max_grad_norm
    assert base == 1.0
    assert [grad_clip_threshold_at(t, cfg.scheduler, base) for t in (1, 1000, 1001, 5000)] == [10, 10, 1, 1]
    assert grad_clip_threshold_at(1, cfg.scheduler, None) is None
    assert grad_clip_threshold_at(1, preset("1b").scheduler, 1.0) == 1.0
    tok = preset("7b-0424").scheduler  # warmup in tokens: 500 steps' worth
    assert grad_clip_threshold_at(500 * TOKENS_PER_STEP, tok, 1.0) == 5.0
    assert grad_clip_threshold_at(501 * TOKENS_PER_STEP, tok, 1.0) == 1.0


def test_grad_clip_threshold_lags_one_step():
    """The loop clips with the threshold stored at the previous step, then stores this step's: the 7B run
    clips step 1 at the raw 1.0, steps 2..1001 at 10.0, and later steps at 1.0 (§6.5)."""
    cfg = preset("7b")
    stored = cfg.max_grad_norm  # what the optimizer's groups hold after construction
    used = {}
    for step in range(1, 1004):
        used[step] = stored
        stored = grad_clip_threshold_at(step, cfg.scheduler, cfg.max_grad_norm)
    assert used[1] == 1.0
    assert {used[s] for s in range(2, 1002)} == {10.0}
    assert used[1002] == used[1003] == 1.0


def test_bolt_on_warmup_after_optimizer_reset():
    cfg = preset("1b").scheduler
    bolt = BoltOnWarmup.for_restart(10_000, cfg)
    assert (bolt.start, bolt.end) == (10_000, 12_000)
    lr0, max_steps = 4e-4, 739_328
    target = lr_at(12_000, cfg, lr0, max_steps)
    assert bolt.lr_at(5_000, cfg, lr0, max_steps) == 0.0
    assert bolt.lr_at(10_000, cfg, lr0, max_steps) == 0.0
    assert bolt.lr_at(11_000, cfg, lr0, max_steps) == pytest.approx(target / 2)
    assert bolt.lr_at(12_000, cfg, lr0, max_steps) == target
    assert bolt.lr_at(300_000, cfg, lr0, max_steps) == lr_at(300_000, cfg, lr0, max_steps)
    # Upstream measures the bolt-on window in steps even for a token schedule; so do we.
    tok = preset("7b-0424").scheduler
    assert BoltOnWarmup.for_restart(100, tok).end == 100 + tok.t_warmup
