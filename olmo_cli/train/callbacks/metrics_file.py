"""`metrics.jsonl` in the run directory: one JSON object per step, upstream's metric names plus `step`,
`lr`, `tokens_per_second` (all ranks) and `mfu`. Written by the main rank only.

On a resume the lines of steps after the checkpoint (trained, then lost with the process) are dropped
first, so the file reads as the history of the run that continued, one line per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from olmo_cli.atomic import atomic_write_text
from olmo_cli.train.callbacks.base import Callback

if TYPE_CHECKING:
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["METRICS_FILE", "MetricsFile", "read_metrics", "step_record"]

METRICS_FILE = "metrics.jsonl"


def step_record(trainer: Trainer, metrics: dict[str, float]) -> dict[str, Any]:
    """The step's metrics with the summary fields every sink shares."""
    per_device = metrics.get("throughput/device/tokens_per_second")
    record: dict[str, Any] = {
        "step": trainer.state.global_step,
        "lr": metrics.get("optim/learning_rate_group0"),
        "tokens_per_second": per_device * trainer.world.world_size if per_device is not None else None,
        "mfu": metrics.get("throughput/device/mfu"),
    }
    record.update(metrics)
    return record


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity: write null rather than a file other tools refuse.
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsFile(Callback):
    name = "metrics_file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= trainer.state.global_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in on_end

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        record = {k: _finite(v) for k, v in step_record(trainer, metrics).items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a last line cut short by a crash is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
