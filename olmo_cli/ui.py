"""Everything the CLI shows goes through here: one rich Console for results (stdout) and one for
messages (stderr), error rendering, and the small formatting helpers tables share."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.table import Table
from rich.text import Text

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_error(message: str, *, details: list[str] | None = None, hint: str | None = None) -> None:
    # Messages are plain text (paths, JSON shapes, `--set a=[x,y]`): only our labels are markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    for line in details or []:
        err_console.print(f"  {line}", markup=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", markup=True, soft_wrap=True)


def print_json(data: Any) -> None:
    # Plain stdout: scripts read this, so no rich wrapping or colour.
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table whose columns keep their width; only the last one wraps (or is cut with an ellipsis)."""
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        last = i == len(columns) - 1
        t.add_column(
            name,
            justify="right" if name in right else "left",
            no_wrap=not last,
            overflow="fold" if last else "ellipsis",
            min_width=None if last else len(name),
        )
    return t


def human_count(n: float | None, unit: str = "") -> str:
    """1176764416 -> '1.18B'; keeps three significant figures."""
    if n is None:
        return "-"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def scientific(n: float | None, unit: str = "") -> str:
    """8.83e22 FLOPs: for quantities beyond the T suffix."""
    if n is None:
        return "-"
    mantissa, exponent = f"{n:.3e}".split("e")
    return f"{float(mantissa):.3g}e{int(exponent)}{unit}"


def human_bytes(n: float) -> str:
    for size, suffix in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if n >= size:
            return f"{n / size:.1f} {suffix}"
    return f"{n:.0f} B"


def warn_ignored(ignored: list[Any]) -> None:
    """Report config values olmo reads but does not act on (never drop them silently)."""
    if not ignored:
        return
    several = len(ignored) > 1
    verb = "settings in this config are" if several else "setting in this config is"
    warn(f"{len(ignored)} {verb} not acted on:")
    for item in ignored:
        err_console.print(f"  {item.path} = {item.value!r}: {item.why}", markup=False, soft_wrap=True)


@contextmanager
def progress(
    description: str,
    total: float | None,
    *,
    rates: dict[str, str] | None = None,
    enabled: bool = True,
    from_zero: bool = False,
) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr with an ETA; yields `update(completed, total=None, **counts)`.

    `rates` maps a count's name to the unit shown for its rate since the start (e.g. {"documents":
    "docs"} -> "1.2K docs/s"); counts already done when the bar starts (a resumed run) are left out,
    unless `from_zero` (every count starts at 0: the first update already holds the first chunk's work).
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    if not enabled:
        yield lambda completed, **counts: None
        return
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    columns += [_RateColumn(name, unit) for name, unit in (rates or {}).items()]
    columns.append(TimeRemainingColumn(elapsed_when_finished=True))  # when done: the time it took
    # Shown from the first update on: work that ends (or fails) before any progress leaves no empty bar.
    bar = Progress(*columns, console=err_console, transient=False)
    task = bar.add_task(description, total=total)
    start: dict[str, float] = {}

    def update(completed: float, total: float | None = None, **counts: float) -> None:
        if not bar.live.is_started:
            bar.start()
        for name, value in counts.items():
            start.setdefault(name, 0 if from_zero else value)
        fields = {**{f"{k}_start": v for k, v in start.items()}, **counts}
        bar.update(task, completed=completed, total=total, **fields)  # total None: unchanged

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


class _RateColumn(ProgressColumn):
    def __init__(self, name: str, unit: str) -> None:
        super().__init__()
        self.name, self.unit = name, unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        done = task.fields.get(self.name, 0) - task.fields.get(f"{self.name}_start", 0)
        rate = done / elapsed if elapsed > 0 else 0.0
        return Text(f"{human_count(rate)} {self.unit}/s", style="cyan")


class _AverageSpeedColumn(ProgressColumn):
    """Bytes per second: over the last half minute while the transfer runs, and once it has finished,
    the average over the whole of it (bytes moved in this run / the time since the first byte was
    asked for) - not the speed of the last file."""

    def render(self, task: Task) -> Text:
        began, moved = task.fields.get("began"), task.fields.get("moved")
        if task.finished and began is not None and moved is not None:
            seconds = (task.fields.get("ended") or time.monotonic()) - began
            speed = moved / seconds if seconds > 0 else None
        else:
            speed = task.speed
        if speed is None:
            return Text("?", style="progress.data.speed")
        return Text(f"{human_bytes(speed)}/s", style="progress.data.speed")  # binary, as the sizes


class Transfers:
    """Download progress on stderr: a bar per file being fetched and one for the total, each with its
    size, speed and ETA. Keys are whatever the caller uses to name a file."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._tasks: dict[Any, Any] = {}
        self._done: dict[Any, float] = {}
        self._resumed: dict[Any, float] = {}  # bytes each file had on disk before this run
        self._began: float | None = None
        self._total = progress.add_task("total", total=0, completed=0) if progress else None

    def add(self, key: Any, description: str, total: float | None, completed: float = 0) -> None:
        if self._progress is None:
            return
        if not self._progress.live.is_started:  # shown from the first file on: no empty bar
            self._progress.start()
        self._tasks[key] = self._progress.add_task(description, total=total, completed=completed)
        self._done[key] = completed
        self._resumed[key] = completed
        if self._began is None:
            self._began = time.monotonic()
        grand = self._progress.tasks[self._total]
        # reset, not update: bytes already on disk from an earlier run must not count as speed
        self._progress.reset(
            self._total,
            total=(grand.total or 0) + (total or 0),
            completed=sum(self._done.values()),
            **self._fields(),
        )

    def update(self, key: Any, completed: float) -> None:
        if self._progress is None or key not in self._tasks:
            return
        self._progress.update(self._tasks[key], completed=completed)
        self._done[key] = completed
        self._refresh_total()

    def finish(self, key: Any, size: float) -> None:
        if self._progress is None or key not in self._tasks:
            return
        self._progress.update(self._tasks[key], completed=size, visible=False)
        self._done[key] = size
        self._refresh_total()

    def note(self, message: str) -> None:
        """A line above the bars (a retry, a warning)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, soft_wrap=True, style="yellow")

    def _fields(self) -> dict[str, float | None]:
        moved = sum(self._done.values()) - sum(self._resumed.values())
        return {"began": self._began, "moved": moved, "ended": None}

    def _refresh_total(self) -> None:
        done = sum(self._done.values())
        fields = self._fields()
        grand = self._progress.tasks[self._total]
        if grand.total is not None and done >= grand.total:
            fields["ended"] = time.monotonic()
        self._progress.update(self._total, completed=done, **fields)


@contextmanager
def transfers(enabled: bool = True) -> Iterator[Transfers]:
    """Per-file and total download bars (nothing at all when not `enabled`)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        yield Transfers(None)
        return
    bar = Progress(
        TextColumn("{task.description}", table_column=None),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _AverageSpeedColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
        console=err_console,
        transient=False,
    )
    try:
        yield Transfers(bar)
    finally:
        if bar.live.is_started:
            bar.stop()
