"""What the training engine tells the outside world, as plain dataclasses (docs/architecture.md rule 13).

`run()` hands each event to one callable; the CLI renders them (a live display, plain lines or JSON),
tests collect them in a list. Only the main rank emits events, so a renderer never sees duplicates.
Every event has `kind` (a short stable name) and `as_dict()` for JSON output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CheckpointSaved",
    "DataProgress",
    "EvalDone",
    "Event",
    "EventSink",
    "Message",
    "RunFinished",
    "RunStarted",
    "StepDone",
]


class _Event:
    kind = "event"

    def as_dict(self) -> dict[str, Any]:
        out = {"event": self.kind}
        for key, value in asdict(self).items():  # type: ignore[call-overload]
            out[key] = str(value) if isinstance(value, Path) else value
        return out


@dataclass(frozen=True)
class Message(_Event):
    """Something worth telling the user that is not a number: which data is used, a setting ignored."""

    text: str
    level: Literal["info", "warning"] = "info"
    kind = "message"


@dataclass(frozen=True)
class DataProgress(_Event):
    """Progress of preparing data before training (tokenizing the default corpus on first use)."""

    what: str
    done: int
    total: int | None
    unit: str = "bytes"
    kind = "data_progress"


@dataclass(frozen=True)
class RunStarted(_Event):
    """Everything is built; the first step is next. `plan` is `Plan.as_dict()` of train/plan.py."""

    run_name: str
    run_dir: Path
    plan: dict[str, Any]
    start_step: int  # steps already done (0, or the checkpoint's step when resuming)
    stop_step: int  # the step training stops after
    world_size: int
    device: str
    precision: str
    data: str  # where the training data comes from, in words
    resumed_from: Path | None = None
    peak_flops: float | None = None  # one device's peak, for MFU
    peak_flops_source: str | None = None
    stop_reason: str = ""  # why training stops at stop_step
    kind = "run_started"


@dataclass(frozen=True)
class StepDone(_Event):
    """One optimizer step. `metrics` uses upstream's names (train/CrossEntropyLoss, optim/..., ...)."""

    step: int
    stop_step: int
    loss: float
    lr: float
    tokens_per_second: float | None  # all ranks together, over the speed window
    mfu: float | None  # fraction of peak, 0..1
    eta_seconds: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    kind = "step"


@dataclass(frozen=True)
class CheckpointSaved(_Event):
    step: int
    path: Path
    sharded: bool
    seconds: float
    kind = "checkpoint"


@dataclass(frozen=True)
class EvalDone(_Event):
    step: int
    metrics: dict[str, float]
    seconds: float
    kind = "eval"


@dataclass(frozen=True)
class RunFinished(_Event):
    """Training ended. `reason`: the stop step was reached, the data ran out, or a signal asked to stop."""

    step: int
    reason: Literal["finished", "data_exhausted", "interrupted"]
    seconds: float
    first_loss: float | None
    last_loss: float | None
    checkpoint: Path | None
    kind = "run_finished"


Event = Message | DataProgress | RunStarted | StepDone | CheckpointSaved | EvalDone | RunFinished
EventSink = Callable[[Event], None]
