"""The UI feed: each step's numbers as a `StepDone` event for whoever renders them (main rank only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.callbacks.metrics_file import step_record
from olmo_cli.train.events import EventSink, StepDone

if TYPE_CHECKING:
    from olmo_cli.train.loop import Trainer

__all__ = ["EventFeed"]


class EventFeed(Callback):
    name = "event_feed"

    def __init__(self, events: EventSink) -> None:
        self.events = events

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not trainer.world.is_main:
            return
        record = step_record(trainer, metrics)
        step, stop = trainer.state.global_step, trainer.schedule.stop_step
        per_step = trainer.seconds_per_step
        eta = per_step * max(stop - step, 0) if per_step is not None else None
        self.events(
            StepDone(
                step=step,
                stop_step=stop,
                loss=metrics["train/CrossEntropyLoss"],
                lr=record["lr"] if record["lr"] is not None else float("nan"),
                tokens_per_second=record["tokens_per_second"],
                mfu=record["mfu"],
                eta_seconds=eta,
                metrics=dict(metrics),
            )
        )
