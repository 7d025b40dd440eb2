"""What `olmo eval` does once its options are parsed: load, evaluate, show, write. The engine work is in
olmo_cli/eval/; this module renders its progress and results."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.commands._options import Dtype

if TYPE_CHECKING:
    import torch

    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.eval.downstream import TaskResult
    from olmo_cli.eval.perplexity_sources import PplResult
    from olmo_cli.eval.results import EvalRun
    from olmo_cli.eval.taskfile import TaskData
    from olmo_cli.checkpoint.weights import CheckpointWeights


@dataclass
class Request:
    checkpoint: Path | None
    data: list[str]
    perplexity: bool
    tasks: list[str]
    task_files: list[Path]
    limit: int | None
    batch_size: int
    max_tokens: int | None
    seq_len: int | None
    max_length: int
    harness: list[str]
    harness_include: Path | None
    output: Path | None
    device: str | None
    dtype: Dtype
    json_output: bool


def show_task_list(json_output: bool) -> None:
    from olmo_cli import ui
    from olmo_cli.eval.formats import BUILTIN_TASKS, CORE_TASKS
    from olmo_cli.eval.mmlu import MMLU_TASKS
    from olmo_cli.eval.package_data import find_package_data
    from olmo_cli.eval.tasks import INSTALL_HINT, known_tasks

    data = find_package_data()
    known = known_tasks(data)
    metrics = {name: t.metric for name, t in [*BUILTIN_TASKS.items(), *MMLU_TASKS.items()]}
    if json_output:
        ui.print_json({"package": data.describe() if data else None, "tasks": known})
        return
    table = ui.table("task", "metric", "data", title="Tasks for olmo eval --tasks")
    for name, source in known.items():
        label = f"{name} (core)" if name in CORE_TASKS else name
        table.add_row(label, metrics.get(name, "from config"), source or "[yellow]not installed[/]")
    ui.console.print(table)
    if data is None:
        ui.warn(f"no upstream task data found: {INSTALL_HINT}")


def _check(req: Request) -> None:
    from olmo_cli.errors import UsageError

    if req.checkpoint is None:
        raise UsageError("give the checkpoint to evaluate", hint="olmo eval CKPT [--tasks ...]")
    if not req.checkpoint.exists():  # before the task data, which would otherwise be the first complaint
        from olmo_cli.errors import CheckpointError

        raise CheckpointError(f"checkpoint {req.checkpoint} does not exist", hint="check the path")
    if req.data and not req.perplexity:
        raise UsageError(
            f"{req.data[0]} is given but --perplexity is not", hint="olmo eval CKPT --perplexity DATA..."
        )
    if req.perplexity and not req.data:
        raise UsageError("--perplexity needs DATA to evaluate", hint="olmo eval CKPT --perplexity DATA...")


def _selected_tasks(req: Request) -> list[TaskData]:
    """Task data, loaded (and checked) before the slower model load."""
    from olmo_cli.errors import UsageError
    from olmo_cli.eval.formats import CORE_TASKS
    from olmo_cli.eval.harness import INSTALL_HINT, harness_available
    from olmo_cli.eval.package_data import find_package_data
    from olmo_cli.eval.tasks import load_tasks

    names = list(req.tasks)
    if not names and not req.task_files and not req.perplexity and not req.harness:
        names = list(CORE_TASKS)
    if req.harness and not harness_available():
        raise UsageError("--harness needs lm-evaluation-harness, which is not installed", hint=INSTALL_HINT)
    data = find_package_data() if names else None
    return load_tasks(names, req.task_files, data=data, limit=req.limit)


def run(req: Request) -> None:
    _check(req)
    tasks = _selected_tasks(req)  # bad task names and files fail here, before torch is even imported
    from olmo_cli import ui
    from olmo_cli.commands._options import resolve_device, resolve_dtype
    from olmo_cli.load.build import load_model, load_tokenizer
    from olmo_cli.load.read import read_checkpoint

    assert req.checkpoint is not None
    where = resolve_device(req.device)
    torch_dtype = resolve_dtype(req.dtype, where)
    found = read_checkpoint(req.checkpoint)
    for warning in found.warnings:
        ui.warn(warning)
    tokenizer = load_tokenizer(found)
    sources = _open_sources(req, found, tokenizer)  # raw text is tokenized before the model loads
    model = load_model(found, device=where, dtype=torch_dtype)
    started = time.perf_counter()
    result = _new_run(req, found, tokenizer, where, torch_dtype)
    result.perplexity = _run_perplexity(req, model, tokenizer, sources, found)
    result.tasks = _run_tasks(req, model, tokenizer, tasks)
    if req.harness:
        result.harness = _run_harness(req, model, tokenizer)
    result.seconds = time.perf_counter() - started
    _report(req, result)


def _new_run(
    req: Request,
    found: CheckpointWeights,
    tokenizer: ResolvedTokenizer,
    where: torch.device,
    dtype: torch.dtype,
) -> EvalRun:
    from olmo_cli.eval.results import EvalRun

    settings: dict[str, Any] = {
        "batch_size": req.batch_size,
        "limit": req.limit,
        "max_length": req.max_length,
        "max_tokens": req.max_tokens,
        "seq_len": req.seq_len or found.config.model.max_sequence_length,
        "device": str(where),
        "dtype": str(dtype).removeprefix("torch."),
    }
    return EvalRun(
        checkpoint=str(found.path),
        checkpoint_kind=found.kind,
        model_config=found.config.model.model_dump(mode="json"),
        tokenizer=tokenizer.identity.as_dict(),
        settings=settings,
    )


def _open_sources(req: Request, found: CheckpointWeights, tokenizer: ResolvedTokenizer) -> list[Any]:
    from olmo_cli.errors import UsageError
    from olmo_cli.eval.perplexity_sources import open_source

    sources = [open_source(item, tokenizer, found.config.data.memmap_dtype) for item in req.data]
    labels = [s.label for s in sources]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise UsageError(f"two DATA share the label {duplicated[0]!r}", hint="name them: LABEL=PATH")
    return sources


def _run_perplexity(
    req: Request, model: Any, tokenizer: ResolvedTokenizer, sources: list[Any], found: CheckpointWeights
) -> list[PplResult]:
    from olmo_cli import ui
    from olmo_cli.eval.perplexity_sources import evaluate_source, predicted_tokens, token_byte_lengths

    if not sources:
        return []
    seq_len = req.seq_len or found.config.model.max_sequence_length
    byte_lengths = token_byte_lengths(tokenizer, found.config.model.padded_vocab_size)
    results = []
    for source in sources:
        total = predicted_tokens(source, seq_len, req.max_tokens)
        with ui.progress(source.label, total, rates={"tokens": "tok"}, enabled=not req.json_output) as update:
            done = [0]

            def advance(n: int, done: list[int] = done, update: Any = update) -> None:
                done[0] += n
                update(done[0], tokens=done[0])

            results.append(
                evaluate_source(
                    model,
                    source,
                    byte_lengths,
                    seq_len=seq_len,
                    batch_size=req.batch_size,
                    max_tokens=req.max_tokens,
                    progress=advance,
                )  # fmt: skip
            )
    return results


def _run_tasks(
    req: Request, model: Any, tokenizer: ResolvedTokenizer, tasks: list[TaskData]
) -> list[TaskResult]:
    from olmo_cli import ui
    from olmo_cli.eval.downstream import evaluate_prepared, prepare_task

    results = []
    for number, task in enumerate(tasks, 1):
        prepared = prepare_task(task, tokenizer, req.max_length)
        label = f"{task.name} ({number}/{len(tasks)})"
        total = len(prepared.requests.requests)
        with ui.progress(label, total, rates={"requests": "req"}, enabled=not req.json_output) as update:
            done = [0]

            def advance(n: int, done: list[int] = done, update: Any = update) -> None:
                done[0] += n
                update(done[0], requests=done[0])

            results.append(evaluate_prepared(model, prepared, batch_size=req.batch_size, progress=advance))
    return results


def _run_harness(req: Request, model: Any, tokenizer: ResolvedTokenizer) -> dict[str, Any]:
    from olmo_cli.eval.harness import harness_lm, run_harness

    lm = harness_lm(model, tokenizer, batch_size=req.batch_size)
    return run_harness(lm, req.harness, include_path=req.harness_include, limit=req.limit)


def _report(req: Request, run: EvalRun) -> None:
    from olmo_cli import ui
    from olmo_cli.eval.results import results_dict, write_results

    if req.output is not None:
        write_results(run, req.output)
    if req.json_output:
        ui.print_json(results_dict(run))
        return
    if run.perplexity:
        ui.console.print(_ppl_table(run.perplexity))
    if run.tasks:
        ui.console.print(_task_table(run.tasks))
    if run.harness is not None:
        ui.console.print(_harness_table(run.harness))
    requests = sum(r.requests for r in run.tasks)
    line = f"{run.seconds:.1f}s"
    if requests:
        task_seconds = sum(r.seconds for r in run.tasks)
        line += f"; {requests} requests in {task_seconds:.1f}s ({requests / max(task_seconds, 1e-9):.0f}/s)"
    if req.output is not None:
        line += f"; wrote {req.output}"
    ui.err_console.print(f"[dim]{line}[/]")


def _fmt(value: float | None, digits: int = 4) -> str:
    import math

    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _task_table(results: list[TaskResult]) -> Any:
    from olmo_cli import ui

    table = ui.table(
        "task",
        "metric",
        "value",
        "stderr",
        "docs",
        title="Tasks (* = the metric upstream reports)",
        right=("value", "stderr", "docs"),
    )
    for result in results:
        ordered = [result.primary_metric, *(m for m in result.metrics if m != result.primary_metric)]
        for i, metric in enumerate(ordered):
            star = "*" if metric == result.primary_metric else " "
            value = _fmt(result.metrics[metric])
            table.add_row(
                result.name if i == 0 else "",
                f"{metric} {star}",
                f"[bold]{value}[/]" if star == "*" else value,
                _fmt(result.stderr.get(metric)),
                str(result.docs) if i == 0 else "",
            )
    return table


def _ppl_table(results: list[PplResult]) -> Any:
    from olmo_cli import ui

    table = ui.table(
        "data",
        "tokens",
        "bytes",
        "cross-entropy",
        "perplexity",
        "bits/byte",
        title="Perplexity",
        right=("tokens", "bytes", "cross-entropy", "perplexity", "bits/byte"),
    )
    for r in results:
        table.add_row(
            r.label,
            f"{r.tokens:,}",
            f"{r.bytes:,}",
            _fmt(r.cross_entropy),
            _fmt(r.perplexity, 3),
            _fmt(r.bits_per_byte),
        )
    return table


def _harness_table(harness: dict[str, Any]) -> Any:
    from olmo_cli import ui

    table = ui.table(
        "task",
        "metric",
        "value",
        "stderr",
        "n",
        title="lm-evaluation-harness",
        right=("value", "stderr", "n"),
    )
    for task, metrics in harness["results"].items():
        n = harness.get("n-samples", {}).get(task, {}).get("effective", "")
        first = True
        for key, value in metrics.items():
            name, _, _filter = key.partition(",")
            if name == "alias" or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{name}_stderr,{_filter}")
            table.add_row(
                task if first else "",
                name,
                _fmt(value),
                _fmt(stderr if isinstance(stderr, float) else None),
                str(n) if first else "",
            )
            first = False
    return table
