"""What `olmo eval` shows: the task list, a progress bar per perplexity source and task (from the
engine's events), the result tables. The work itself is eval/run.py's."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_cli.eval.downstream import TaskResult
    from olmo_cli.eval.events import EvalEvent
    from olmo_cli.eval.perplexity_sources import PplResult
    from olmo_cli.eval.results import EvalRun


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


class EvalProgress:
    """Renders run_eval's events: one progress bar per stage, messages on stderr. Use as a context
    manager, so that a bar an error left open is closed."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._stage = ExitStack()
        self._update: Any = None
        self._unit = ""

    def __enter__(self) -> EvalProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stage.close()

    def __call__(self, event: EvalEvent) -> None:
        from olmo_cli import ui
        from olmo_cli.eval.events import Message, StageDone, StageProgress, StageStarted

        match event:
            case Message(text=text, level="warning"):
                ui.warn(text)
            case Message(text=text):
                ui.err_console.print(f"[dim]{text}[/]")
            case StageStarted(stage=stage, name=name, number=number, count=count, total=total, unit=unit):
                self._stage.close()
                label = name if stage == "perplexity" else f"{name} ({number}/{count})"
                rates = {unit: {"tokens": "tok", "requests": "req"}[unit]}
                bar = ui.progress(label, total, rates=rates, enabled=self.enabled, from_zero=True)
                self._update, self._unit = self._stage.enter_context(bar), unit
            case StageProgress(done=done) if self._update is not None:
                self._update(done, **{self._unit: done})
            case StageDone():
                self._stage.close()
                self._update = None


def report(run: EvalRun, *, output: Path | None, json_output: bool) -> None:
    """Writes the results file if asked, then prints the results (JSON, or tables and a summary line)."""
    from olmo_cli import ui
    from olmo_cli.eval.results import results_dict, write_results

    if output is not None:
        write_results(run, output)
    if json_output:
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
    if output is not None:
        line += f"; wrote {output}"
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
