"""The repetition filter (docs/format.md §3.6) against a brute-force count written independently: for each
period p and start s, how many whole copies of ids[s:s+p] follow one another from s."""

from __future__ import annotations

import numpy as np
import pytest

from olmo_cli.config.schema import InstanceFilterConfig
from olmo_cli.data.repetition import longest_periodic_run, repeats_too_often

OLMO2 = InstanceFilterConfig(repetition_max_period=13, repetition_min_period=1, repetition_max_count=32)


def most_copies(ids: list[int], period: int) -> int:
    best = 0
    for start in range(len(ids) - period + 1):
        unit, copies, at = ids[start : start + period], 0, start
        while ids[at : at + period] == unit:
            copies, at = copies + 1, at + period
        # a trailing partial copy does not count, a leading one is some other start's whole copy
        best = max(best, copies)
    return best


def brute_force(ids: np.ndarray, rule: InstanceFilterConfig) -> bool:
    as_list = ids.tolist()
    top = min(rule.repetition_max_period, len(as_list) // 3)
    periods = range(rule.repetition_min_period, top + 1)
    return any(most_copies(as_list, p) >= max(rule.repetition_max_count, 3) for p in periods)


def with_repeats(unit: list[int], copies: int, length: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 50000, size=length)  # distinct enough to hold no repetition of their own
    stretch = np.tile(unit, copies)
    ids[100 : 100 + len(stretch)] = stretch
    return ids


def test_olmo2_rule_masks_32_copies_and_keeps_31():
    unit = [7, 8, 9, 10, 11]
    assert repeats_too_often(with_repeats(unit, 32), OLMO2)
    assert not repeats_too_often(with_repeats(unit, 31), OLMO2)


def test_a_partial_copy_at_the_end_does_not_count():
    ids = with_repeats([4, 5, 6], 31)
    ids[100 + 93 : 100 + 95] = [4, 5]  # 31 copies and two thirds of a 32nd
    assert longest_periodic_run(ids, 3) == 93 + 2 - 3
    assert not repeats_too_often(ids, OLMO2)


def test_periods_beyond_the_maximum_are_not_looked_for():
    long_unit = list(range(200, 214))  # period 14 > 13
    assert not repeats_too_often(with_repeats(long_unit, 32, length=1024), OLMO2)
    assert repeats_too_often(with_repeats(long_unit[:13], 32, length=1024), OLMO2)


def test_the_longest_period_is_a_third_of_the_instance():
    ids = np.array([1, 2, 3, 4] * 3)  # 12 ids, 3 copies of period 4 = L // 3
    rule = InstanceFilterConfig(repetition_max_period=13, repetition_min_period=4, repetition_max_count=3)
    assert repeats_too_often(ids, rule)
    assert not repeats_too_often(ids[:11], rule)  # L // 3 = 3 < 4: no period left to look for


def test_a_count_under_three_acts_as_three():
    ids = with_repeats([3, 4], 2, length=128)
    low = InstanceFilterConfig(repetition_max_period=13, repetition_min_period=2, repetition_max_count=1)
    assert not repeats_too_often(ids, low)
    assert repeats_too_often(with_repeats([3, 4], 3, length=128), low)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_brute_force_on_random_instances(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        length = int(rng.integers(6, 90))
        ids = rng.integers(0, int(rng.integers(2, 5)), size=length)
        for _ in range(int(rng.integers(0, 3))):  # plant a few periodic stretches
            period, copies, start = (
                int(rng.integers(1, 9)),
                int(rng.integers(2, 10)),
                int(rng.integers(length)),
            )
            stretch = np.tile(rng.integers(0, 30, size=period), copies)[: length - start]
            ids[start : start + len(stretch)] = stretch
        high = int(rng.integers(1, 10))
        rule = InstanceFilterConfig(
            repetition_max_period=high,
            repetition_min_period=int(rng.integers(1, high + 1)),
            repetition_max_count=int(rng.integers(1, 9)),
        )
        assert repeats_too_often(ids, rule) == brute_force(ids, rule), (ids.tolist(), rule)
