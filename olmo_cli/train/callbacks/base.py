"""The callback protocol: named hooks the trainer calls, and state that is saved with each checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["Callback", "CallbackList"]


class Callback:
    """Hooks, in the order the trainer calls them for each step:

    `on_start(trainer)` once, after a checkpoint (if any) has been restored;
    `on_step(trainer, metrics)` after the optimizer step: may save, evaluate, and add to `metrics`;
    `on_log(trainer, metrics)` once the step's metrics are complete (sinks write them here);
    `on_end(trainer, reason)` once, after the last step (the final checkpoint is written here);
    `on_error(trainer, error)` instead of `on_end` when the run fails with an exception (not when a
    signal stops it: that is a normal end, reason "interrupted"); the error propagates afterwards.
    `state_dict()` / `load_state_dict()` round-trip through `train.pt` under the callback's `name`.
    """

    name = "callback"

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        pass

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def train_pt_entries(self, trainer: Trainer) -> dict[str, Any]:
        """Top-level `train.pt` keys this callback owns in upstream's layout (the checkpointer's lists)."""
        return {}


class CallbackList:
    """Callbacks called in order; their states keyed by name."""

    def __init__(self, callbacks: list[Callback]) -> None:
        names = [c.name for c in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")
        self.callbacks = list(callbacks)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def on_start(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_start(trainer)

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_step(trainer, metrics)

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for callback in self.callbacks:
            callback.on_log(trainer, metrics)

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        for callback in self.callbacks:
            callback.on_end(trainer, reason)

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """Every callback hears of the failure; one whose own clean-up fails does not stop the others
        or hide the error the run failed with."""
        for callback in self.callbacks:
            try:
                callback.on_error(trainer, error)
            except Exception:  # noqa: BLE001, S112 - the run's own error is the one to report
                continue

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {c.name: c.state_dict() for c in self.callbacks}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for callback in self.callbacks:
            state = states.get(callback.name)
            if isinstance(state, dict):
                callback.load_state_dict(state)

    def train_pt_entries(self, trainer: Trainer) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for callback in self.callbacks:
            out.update(callback.train_pt_entries(trainer))
        return out
