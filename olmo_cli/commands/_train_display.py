"""Rendering the training engine's events: a live panel on a terminal, plain lines in a log, or JSON.

Live (stdout is a TTY): a rich Live panel with a progress bar, ETA, loss, LR, tokens/s, MFU and a loss
sparkline; checkpoints, evaluations and messages scroll above it. Plain (a pipe or a file): one line
every `every` steps (and at most about one a second), plus a line per checkpoint, evaluation and message.
JSON (`--json`): one object per event per line, for scripts.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from olmo_cli import ui

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

    from olmo_cli.train.events import (
        CheckpointSaved,
        DataProgress,
        EvalDone,
        Event,
        Message,
        RunFinished,
        RunStarted,
        StepDone,
    )

__all__ = ["TrainDisplay", "format_duration", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 40
_PLAIN_MIN_SECONDS = 1.0


def sparkline(values: list[float], width: int = _SPARK_WIDTH) -> str:
    """The last `width` values as block characters, scaled between their min and max."""
    shown = [v for v in values[-width:] if math.isfinite(v)]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    span = high - low
    return "".join(_BARS[int((v - low) / span * (len(_BARS) - 1)) if span else 0] for v in shown)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    days = seconds / 86400
    if days >= 1000:
        return f"{days / 365.25:,.3g} years"
    if days >= 2:
        return f"{int(days)}d{int(seconds % 86400) // 3600:02d}h"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _step_fields(event: StepDone) -> str:
    parts = [f"loss {event.loss:.4f}", f"lr {event.lr:.3g}"]
    if event.tokens_per_second is not None:
        parts.append(f"{ui.human_count(event.tokens_per_second)} tok/s")
    if event.mfu is not None:
        parts.append(f"MFU {event.mfu:.1%}")
    return " · ".join(parts)


class TrainDisplay:
    """Call it with each event; use as a context manager so a live panel is always stopped."""

    def __init__(self, *, mode: str | None = None, every: int = 1) -> None:
        if mode is None:
            mode = "live" if ui.console.is_terminal else "plain"
        self.mode = mode
        self.every = max(1, every)
        self.losses: deque[float] = deque(maxlen=_SPARK_WIDTH)
        self.started: RunStarted | None = None
        self.last: StepDone | None = None
        self._live: Live | None = None
        self._progress: Any = None
        self._last_plain = 0.0
        self._eval_defined = False  # the in-loop metric's definition is said once, at the first eval

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def __call__(self, event: Event) -> None:
        if self.mode == "json":
            sys.stdout.write(json.dumps(event.as_dict(), default=str) + "\n")
            sys.stdout.flush()
            return
        from olmo_cli.train import events as ev

        match event:
            case ev.Message():
                self._on_message(event)
            case ev.DataProgress():
                self._on_data_progress(event)
            case ev.RunStarted():
                self._on_run_started(event)
            case ev.StepDone():
                self._on_step(event)
            case ev.CheckpointSaved():
                self._on_checkpoint(event)
            case ev.EvalDone():
                self._on_eval(event)
            case ev.RunFinished():
                self._on_run_finished(event)

    # ---- events ---------------------------------------------------------------------------------

    def _on_message(self, event: Message) -> None:
        if event.level == "warning":
            ui.warn(event.text)
        else:
            ui.err_console.print(event.text, markup=False, soft_wrap=True)

    def _on_data_progress(self, event: DataProgress) -> None:
        if self.mode != "live":
            return
        if self._progress is None:
            self._progress = ui.progress(event.what, event.total)
            self._update = self._progress.__enter__()
        self._update(event.done, total=event.total)
        if event.total is not None and event.done >= event.total:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def _on_run_started(self, event: RunStarted) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None
        self.started = event
        plan = event.plan
        # A run that loaded a checkpoint yet starts at step 1 took its weights only (a finetune).
        verb = "weights from" if event.start_step == 0 else "resumed from"
        resumed = f", {verb} {event.resumed_from}" if event.resumed_from else ""
        ui.console.print(
            f"[bold]{event.run_name}[/]: {plan['params']:,} parameters, {event.device} x{event.world_size}, "
            f"{event.precision}; {plan['tokens_per_step']:,} tokens per step; steps "
            f"{event.start_step + 1}..{event.stop_step}{resumed}",
            soft_wrap=True,
        )
        if event.stop_reason:
            ui.console.print(
                f"stops after step {event.stop_step}: {event.stop_reason}", markup=False, soft_wrap=True
            )
        ui.console.print(f"data: {event.data}", markup=False, soft_wrap=True)
        ui.console.print(f"run directory: {event.run_dir}", markup=False, soft_wrap=True)
        if self.mode == "live":
            from rich.live import Live

            self._live = Live(self._panel(), console=ui.console, refresh_per_second=4, transient=False)
            self._live.start()

    def _on_step(self, event: StepDone) -> None:
        self.last = event
        if math.isfinite(event.loss):
            self.losses.append(event.loss)
        if self._live is not None:
            self._live.update(self._panel())
            return
        now = time.monotonic()
        first = self.started is not None and event.step == self.started.start_step + 1
        due = event.step % self.every == 0 and now - self._last_plain >= _PLAIN_MIN_SECONDS
        if first or due or event.step >= event.stop_step:
            self._last_plain = now
            eta = format_duration(event.eta_seconds)
            ui.console.print(
                f"step {event.step}/{event.stop_step} · {_step_fields(event)} · ETA {eta}", markup=False
            )

    def _on_checkpoint(self, event: CheckpointSaved) -> None:
        kind = "sharded" if event.sharded else "unsharded"
        ui.console.print(
            f"step {event.step}: saved {kind} checkpoint {event.path} ({event.seconds:.1f}s)", markup=False
        )

    def _on_eval(self, event: EvalDone) -> None:
        shown = ", ".join(
            f"{name.removeprefix('eval/')} {value:.4g}"
            for name, value in event.metrics.items()
            if name.endswith("CrossEntropyLoss") or name.startswith("eval/downstream/")
        )
        ui.console.print(f"step {event.step}: eval {shown} ({event.seconds:.1f}s)", markup=False)
        if not self._eval_defined and "CrossEntropyLoss" in shown:
            self._eval_defined = True
            ui.console.print(
                "  (in-loop loss as upstream computes it: the mean over whole instances of each instance's "
                "mean; olmo eval --perplexity weights every token alike)",
                markup=False,
                style="dim",
            )

    def _on_run_finished(self, event: RunFinished) -> None:
        self._stop()
        how = {
            "finished": "finished",
            "data_exhausted": "stopped: the data ran out",
            "interrupted": "stopped by a signal",
        }[event.reason]
        losses = ""
        if event.first_loss is not None and event.last_loss is not None:
            losses = f"; loss {event.first_loss:.4f} -> {event.last_loss:.4f}"
        ui.console.print(
            f"[bold]{how}[/] at step {event.step} in {format_duration(event.seconds)}{losses}", soft_wrap=True
        )
        if event.checkpoint is not None:
            ui.console.print(f"checkpoint: {event.checkpoint}", markup=False, soft_wrap=True)

    # ---- the live panel ---------------------------------------------------------------------------

    def _panel(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        event, started = self.last, self.started
        stop = started.stop_step if started else 1
        start = started.start_step if started else 0
        step = event.step if event else start
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            Text(f"step {step}/{stop}"),
            ProgressBar(total=max(stop - start, 1), completed=step - start, width=40),
            Text(f"ETA {format_duration(event.eta_seconds if event else None)}"),
        )
        if event is None:
            return Group(bar, Text("waiting for the first step...", style="dim"))
        numbers = Text(_step_fields(event))
        spark = Text(sparkline(list(self.losses)), style="cyan")
        return Group(bar, numbers, spark)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None
        if self._live is not None:
            self._live.update(self._panel())
            self._live.stop()
            self._live = None
