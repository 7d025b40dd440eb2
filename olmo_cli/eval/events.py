"""What `run_eval` tells its caller while it works, as plain dataclasses handed to one callable.

Each perplexity source and each task is one stage: `StageStarted` (with the amount of work),
`StageProgress` as batches finish, `StageDone`. `olmo eval` renders them as progress bars; tests collect
them in a list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["EvalEvent", "EvalEvents", "Message", "StageDone", "StageProgress", "StageStarted"]


@dataclass(frozen=True)
class Message:
    """Something the user should know, such as a warning from reading the checkpoint."""

    text: str
    level: Literal["info", "warning"] = "warning"


@dataclass(frozen=True)
class StageStarted:
    """A perplexity source (counted in predicted tokens) or a task (counted in requests) begins."""

    stage: Literal["perplexity", "task"]
    name: str  # the source's label or the task's name
    number: int  # 1-based, among the stages of its kind
    count: int  # how many stages of its kind this run has
    total: int  # tokens or requests to do
    unit: Literal["tokens", "requests"]


@dataclass(frozen=True)
class StageProgress:
    done: int  # tokens or requests done so far in the current stage


@dataclass(frozen=True)
class StageDone:
    name: str


EvalEvent = Message | StageStarted | StageProgress | StageDone
EvalEvents = Callable[[EvalEvent], None]
