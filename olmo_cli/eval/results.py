"""The results file of `olmo eval --output results.json`: every number, plus what produced them (the
checkpoint, its model config, the task versions and data sources, the settings)."""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo_cli.eval.downstream import TaskResult
from olmo_cli.eval.perplexity_sources import PplResult

__all__ = ["EvalRun", "results_dict", "write_results"]

RESULTS_FORMAT = "olmo-eval/1"


@dataclass
class EvalRun:
    checkpoint: str
    checkpoint_kind: str
    model_config: dict[str, Any]
    tokenizer: dict[str, Any]
    settings: dict[str, Any]
    tasks: list[TaskResult] = field(default_factory=list)
    perplexity: list[PplResult] = field(default_factory=list)
    harness: dict[str, Any] | None = None
    seconds: float = 0.0


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: they are written as null."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def task_dict(result: TaskResult) -> dict[str, Any]:
    return {
        "primary_metric": result.primary_metric,
        "primary": _number(result.primary),
        "metrics": {k: _number(v) for k, v in result.metrics.items()},
        "stderr": {k: _number(v) for k, v in result.stderr.items()},
        "docs": result.docs,
        "requests": result.requests,
        "forward_rows": result.forward_rows,
        "seconds": round(result.seconds, 4),
        "requests_per_second": round(result.requests / result.seconds, 2) if result.seconds > 0 else None,
        "version": result.version,
        "source": result.source,
    }


def ppl_dict(result: PplResult) -> dict[str, Any]:
    return {
        "cross_entropy": _number(result.cross_entropy),
        "perplexity": _number(result.perplexity),
        "bits_per_byte": _number(result.bits_per_byte),
        "tokens": result.tokens,
        "bytes": result.bytes,
        "nll_sum": result.nll,
        "windows": result.windows,
        "seconds": round(result.seconds, 4),
        **result.extra,
    }


def results_dict(run: EvalRun) -> dict[str, Any]:
    from olmo_cli import __version__

    out: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "olmo_version": __version__,
        "python": platform.python_version(),
        "checkpoint": run.checkpoint,
        "checkpoint_kind": run.checkpoint_kind,
        "config": {"model": run.model_config, "tokenizer": run.tokenizer},
        "settings": run.settings,
        "seconds": round(run.seconds, 4),
        "tasks": {r.name: task_dict(r) for r in run.tasks},
        "perplexity": {r.label: ppl_dict(r) for r in run.perplexity},
    }
    if run.harness is not None:
        out["harness"] = run.harness
    return out


def write_results(run: EvalRun, path: Path | str) -> None:
    import json

    from olmo_cli.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(results_dict(run), indent=2, default=str) + "\n")
