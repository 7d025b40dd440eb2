"""The repetition filter of OLMo 2's configs (`data.instance_filter`): instances that repeat one short
token sequence many times over are kept in the data order but take no loss.

An instance is filtered when, for some period p in [repetition_min_period, min(repetition_max_period,
L // 3)], a stretch of it is periodic with period p and spans at least `repetition_max_count` whole
periods. A stretch periodic with period p is a maximal run of positions x with ids[x] == ids[x + p]; a
run of r such positions covers r + p tokens, so it repeats (r + p) // p times. Upstream counts only
repetitions of at least 3 periods (docs/format.md, section 3.6), so a count under 3 behaves as 3.
"""

from __future__ import annotations

import numpy as np

from olmo_cli.config.schema import InstanceFilterConfig

__all__ = ["longest_periodic_run", "repeats_too_often"]


def longest_periodic_run(ids: np.ndarray, period: int) -> int:
    """The longest run of consecutive positions x with ids[x] == ids[x + period] (0 if none)."""
    if period <= 0 or period >= len(ids):
        return 0
    same = np.concatenate(([False], ids[:-period] == ids[period:], [False]))
    edges = np.flatnonzero(same[1:] != same[:-1])  # alternating run starts and (exclusive) ends
    if len(edges) == 0:
        return 0
    return int((edges[1::2] - edges[0::2]).max())


def repeats_too_often(ids: np.ndarray, rule: InstanceFilterConfig) -> bool:
    """Whether `ids` (one instance) holds a periodic stretch of at least `repetition_max_count` periods."""
    count = max(rule.repetition_max_count, 3)
    longest_period = min(rule.repetition_max_period, len(ids) // 3)
    for period in range(rule.repetition_min_period, longest_period + 1):
        if (longest_periodic_run(ids, period) + period) // period >= count:
            return True
    return False
