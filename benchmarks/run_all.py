"""Every benchmark in one go, with small settings, and one table of their figures.

Runs each benchmarks/bench_*.py as its own process with `--json` and the small arguments in BENCHMARKS
(about eight minutes in all on 2 cores; each script interleaves its repetitions, so that a ratio
compares both sides under the same load), collects their `measures` (benchmarks/measures.py) and prints
one table: benchmark, measure, unit, ours, the anchor and its name, the ratio (above 1: ours does better;
for times and memory it is anchor/ours), and the lowest-highest repetition of each side. A benchmark
whose anchor is not installed is a row "skipped: <why>"; one that fails is a row "failed: <the last line
of its stderr>", and the exit status is then 1. Children get OMP_WAIT_POLICY=PASSIVE unless it is set
(idle OpenMP threads then do not spin on cores that the other side, or other work, needs), except the
generation rows, which run under the default policy as `olmo generate` does.

    python benchmarks/run_all.py                              # all of them
    python benchmarks/run_all.py --only train_step,generate   # some (names as in BENCHMARKS)
    python benchmarks/run_all.py --args serve="--concurrency 1,4 --repeats 3"   # other arguments for one
    python benchmarks/run_all.py --json                       # the table on stderr, the JSON on stdout
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent


def missing_modules(*names: str) -> Callable[[argparse.Namespace], str | None]:
    def check(_: argparse.Namespace) -> str | None:
        absent = [name for name in names if importlib.util.find_spec(name) is None]
        return f"{', '.join(absent)} not installed" if absent else None

    return check


def dolma_missing(opts: argparse.Namespace) -> str | None:
    if opts.dolma and Path(opts.dolma).exists():
        return None
    return "dolma not found (it needs a virtualenv of its own: see bench_tokenize.py; then --dolma PATH)"


class Benchmark(NamedTuple):
    script: str
    args: list[str]  # the small settings
    skip: Callable[[argparse.Namespace], str | None]  # why it cannot run here, or None
    # OMP_WAIT_POLICY=PASSIVE unless set: False for generation, which `olmo generate` runs under the
    # default policy (sleeping threads wake too slowly for a decode step's small products: measured
    # 1.5x transformers passive against 1.9x default at batch 1, tiny fp32)
    passive: bool = True


BENCHMARKS = {
    "train_step": Benchmark(
        "bench_train_step.py",
        ["--batch", "8", "--seq", "128", "--warmup", "1", "--steps", "2", "--repeats", "5"],
        missing_modules("transformers"),
    ),
    # The compass workload (benchmarks/workloads.py), in both precisions: issue 20's figures.
    "train_compass_bf16": Benchmark(
        "bench_train_step.py",
        ["--model", "compass", "--precision", "amp_bf16", "--warmup", "1", "--steps", "1", "--repeats", "3"],
        missing_modules("transformers"),
    ),
    "train_compass_fp32": Benchmark(
        "bench_train_step.py",
        ["--model", "compass", "--precision", "fp32", "--warmup", "1", "--steps", "1", "--repeats", "3"],
        missing_modules("transformers"),
    ),
    "generate": Benchmark(
        "bench_generate.py",
        ["--new-tokens", "64", "--repeats", "5"],
        missing_modules("transformers"),
        passive=False,
    ),
    "generate_compass_bf16": Benchmark(
        "bench_generate.py",
        ["--model", "compass", "--dtype", "bf16", "--new-tokens", "32", "--repeats", "3"],
        missing_modules("transformers"),
        passive=False,
    ),
    "tokenize": Benchmark(
        "bench_tokenize.py", ["--mb", "10", "--files", "4", "--repeats", "3"], dolma_missing
    ),
    "eval": Benchmark("bench_eval.py", ["--limit", "20", "--repeats", "3"], missing_modules("lm_eval")),
    "quantize": Benchmark(
        "bench_quantize.py",
        ["--d-model", "1024", "--layers", "2", "--new-tokens", "16", "--repeats", "3"],
        lambda _: None,
    ),
    "download": Benchmark("bench_download.py", ["--gib", "1", "--repeats", "3"], missing_modules("requests")),
    "inspect_batch": Benchmark("bench_inspect_batch.py", ["--files", "50", "--repeats", "3"], lambda _: None),
    "serve": Benchmark(
        "bench_serve.py",
        ["--concurrency", "1,16", "--repeats", "3"],
        missing_modules("transformers", "httpx"),
    ),
}


class Outcome(NamedTuple):
    name: str
    status: str  # "ok", "skipped" or "failed"
    reason: str
    seconds: float
    measures: list[dict[str, Any]]


def run_one(name: str, argv: list[str], timeout: float, passive: bool = True) -> Outcome:
    """One benchmark's process; its stderr is kept for the reason of a failure."""
    env = {**os.environ, "NO_COLOR": "1"}
    if passive:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Outcome(name, "failed", f"timed out after {timeout:.0f} s", time.perf_counter() - start, [])
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else f"exit status {proc.returncode}, nothing on stderr"
    if proc.returncode != 0:
        return Outcome(name, "failed", last, seconds, [])
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return Outcome(name, "failed", f"no JSON object on stdout ({last})", seconds, [])
    if report.get("skipped"):
        return Outcome(name, "skipped", report["skipped"], seconds, [])
    measures = report.get("measures")
    if not isinstance(measures, list) or not measures:
        return Outcome(name, "failed", "no measures in its JSON", seconds, [])
    return Outcome(name, "ok", "", seconds, measures)


def figure(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def spread(low_high: list[float] | None) -> str:
    return f"{figure(low_high[0])}-{figure(low_high[1])}" if low_high else "-"


HEAD = (
    "benchmark",
    "measure",
    "unit",
    "ours",
    "anchor",
    "anchor name",
    "ratio",
    "ours spread",
    "anchor spread",
)


def table(outcomes: list[Outcome]) -> str:
    rows = []
    for outcome in outcomes:
        if outcome.status != "ok":
            rows.append((outcome.name, f"{outcome.status}: {outcome.reason}"))
        for m in outcome.measures:
            rows.append(
                (outcome.name, m["measure"], m["unit"], figure(m["ours"]), figure(m["anchor"]),
                 m["anchor_name"], f"{m['ratio']:.2f}x", spread(m["ours_spread"]), spread(m["anchor_spread"]))
            )  # fmt: skip
    full = [r for r in [HEAD, *rows] if len(r) == len(HEAD)]
    widths = [max(len(r[i]) for r in full) for i in range(len(HEAD))]
    right = {3, 4, 6, 7, 8}  # the figures

    def line(row: tuple[str, ...]) -> str:
        if len(row) != len(HEAD):  # a skipped or failed benchmark: its reason across the columns
            return f"{row[0]:<{widths[0]}}  {row[1]}"
        cells = [
            f"{c:>{w}}" if i in right else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    ruler = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEAD), ruler, *map(line, rows)])


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--only", default=None, help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar='NAME="ARGS"',
        help="arguments for one benchmark instead of its small settings (repeatable)",
    )
    parser.add_argument("--dolma", default=shutil.which("dolma"), help="dolma executable (bench_tokenize)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark")
    parser.add_argument("--json", action="store_true", help="the JSON on stdout, the table on stderr")
    opts = parser.parse_args()
    names = [n.strip().removeprefix("bench_").removesuffix(".py") for n in (opts.only or "").split(",")]
    names = [n for n in names if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; there are {', '.join(BENCHMARKS)}")
    given = {}
    for item in opts.args:
        name, sep, rest = item.partition("=")
        if not sep or name not in BENCHMARKS:
            parser.error(f"--args wants NAME=ARGS with NAME one of {', '.join(BENCHMARKS)}: {item!r}")
        given[name] = shlex.split(rest)

    outcomes = []
    for i, name in enumerate(names, 1):
        bench = BENCHMARKS[name]
        why = bench.skip(opts)
        if why:
            print(f"[{i}/{len(names)}] {name}: skipped: {why}", file=sys.stderr, flush=True)
            outcomes.append(Outcome(name, "skipped", why, 0.0, []))
            continue
        args = given.get(name, bench.args)
        if name == "tokenize":
            args = [*args, "--dolma", opts.dolma]
        argv = [sys.executable, str(HERE / bench.script), *args, "--json"]
        print(f"[{i}/{len(names)}] {name}: {shlex.join(argv[1:])}", file=sys.stderr, flush=True)
        outcome = run_one(name, argv, opts.timeout, bench.passive)
        note = f": {outcome.reason}" if outcome.reason else ""
        print(f"    {outcome.status} in {outcome.seconds:.0f} s{note}", file=sys.stderr, flush=True)
        outcomes.append(outcome)

    print(table(outcomes), file=sys.stderr if opts.json else sys.stdout, flush=True)
    if opts.json:
        combined = {
            "benchmarks": [
                {"benchmark": o.name, "status": o.status, "reason": o.reason, "seconds": o.seconds}
                for o in outcomes
            ],
            "measures": [{"benchmark": o.name, **m} for o in outcomes for m in o.measures],
        }
        print(json.dumps(combined, indent=1))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
