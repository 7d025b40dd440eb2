"""Everything the CLI shows goes through here: one rich Console for results (stdout) and one for
messages (stderr), error rendering, and the small formatting helpers tables share."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_error(message: str, *, details: list[str] | None = None, hint: str | None = None) -> None:
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    for line in details or []:
        err_console.print(f"  {line}", markup=False, soft_wrap=True)
    if hint:
        err_console.print(f"[yellow]hint:[/] {hint}", markup=True, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", markup=True, soft_wrap=True)


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
    warn(f"{len(ignored)} setting{'s' if len(ignored) > 1 else ''} in this config are not acted on:")
    for item in ignored:
        err_console.print(f"  {item.path} = {item.value!r}: {item.why}", markup=False, soft_wrap=True)
