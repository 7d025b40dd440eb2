"""The benchmarks' common machine-readable output: every script's `--json` prints one JSON object whose
`measures` list holds entries of one shape, which `run_all.py` collects into one table:

    {"measure": str, "unit": str, "ours": float, "anchor": float, "anchor_name": str, "ratio": float,
     "ours_spread": [min, max], "anchor_spread": [min, max], "statistic": str}

`ours` and `anchor` are the figure each script reports (`statistic` says which: the median of
interleaved repetitions, or the best where the script counts the least disturbed run), the spreads the
lowest and highest repetition. `ratio` is always oriented so that above 1 means ours does better: for a
higher-is-better unit (tokens/s, MB/s) it is ours/anchor, for a lower-is-better one (seconds, MiB) it is
anchor/ours, which the measure's unit says ("s, ratio = anchor/ours").

Run as a script, it checks a JSON object on stdin (the output of a benchmark's `--json`):

    python benchmarks/bench_generate.py --json | python benchmarks/measures.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from typing import Any

KEYS = ("measure", "unit", "ours", "anchor", "anchor_name", "ratio", "ours_spread", "anchor_spread")


def measure(
    name: str,
    unit: str,
    ours: Sequence[float],
    anchor: Sequence[float],
    anchor_name: str,
    *,
    higher_is_better: bool = True,
    statistic: str = "median",
    ratio: float | None = None,
) -> dict[str, Any]:
    """One entry from the repetitions' figures of both sides. `statistic` is "median" or "best" (the
    highest for higher-is-better units, else the lowest); `ratio` replaces the ratio of the two figures
    where the script computes its own (e.g. the median of per-repetition ratios)."""

    def figure(values: Sequence[float]) -> float:
        if statistic == "median":
            return statistics.median(values)
        return max(values) if higher_is_better else min(values)

    a, b = figure(ours), figure(anchor)
    if ratio is None:
        ratio = a / b if higher_is_better else b / a
    if not higher_is_better:
        unit = f"{unit}, ratio = anchor/ours"
    return {
        "measure": name,
        "unit": unit,
        "ours": a,
        "anchor": b,
        "anchor_name": anchor_name,
        "ratio": ratio,
        "ours_spread": [min(ours), max(ours)],
        "anchor_spread": [min(anchor), max(anchor)],
        "statistic": statistic,
    }


def span(low_high: Sequence[float], fmt: str = ",.0f") -> str:
    """A spread as people read it: "1,234-1,456"."""
    return f"{low_high[0]:{fmt}}-{low_high[1]:{fmt}}"


@contextmanager
def human_output(as_json: bool) -> Iterator[None]:
    """With --json, what a script prints for people goes to stderr, so that stdout holds the JSON alone."""
    if not as_json:
        yield
        return
    with redirect_stdout(sys.stderr):
        yield


def emit(benchmark: str, measures: list[dict[str, Any]], **extra: Any) -> None:
    """Prints the one JSON object of a benchmark's --json: its name, its measures and anything else."""
    print(json.dumps({"benchmark": benchmark, "measures": measures, **extra}, indent=1, default=str))


def run_benchmark(benchmark: str, parser: argparse.ArgumentParser, run: Callable[[Any], Any]) -> int:
    """Adds --json to `parser`, parses the command line and calls `run(args)`, which returns its
    measures, or a dict of them (`measures`) and anything else for the JSON object; with --json what
    `run` prints goes to stderr and the JSON object (with the settings) to stdout."""
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout (the rest on stderr)")
    args = parser.parse_args()
    with human_output(args.json):
        found = run(args)
    if args.json:
        report = found if isinstance(found, dict) else {"measures": found}
        emit(benchmark, settings={k: v for k, v in vars(args).items() if k != "json"}, **report)
    return 0


def check(report: dict[str, Any]) -> list[str]:
    """What is wrong with a benchmark's JSON object (empty: nothing)."""
    problems = []
    if not isinstance(report.get("measures"), list):
        return ["no `measures` list"]
    for i, entry in enumerate(report["measures"]):
        missing = [k for k in KEYS if k not in entry]
        if missing:
            problems.append(f"measure {i}: missing {', '.join(missing)}")
    return problems


if __name__ == "__main__":
    found = check(json.load(sys.stdin))
    print("\n".join(found) or "ok")
    sys.exit(1 if found else 0)
