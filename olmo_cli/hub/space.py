"""Disk space for a download: checked before fetching anything, and reported when the disk fills up."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from olmo_cli.errors import CheckpointError

if TYPE_CHECKING:
    from olmo_cli.hub.download import CheckpointPlan

__all__ = ["check_space", "existing", "human_size"]


def existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (what `shutil.disk_usage` can be asked about)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def check_space(plans: Sequence[CheckpointPlan]) -> None:
    """Fail before fetching anything if the destination cannot hold what is missing."""
    todo = [p for p in plans if not p.complete]
    if not todo:
        return
    root = existing(todo[0].final.parent)
    need, free = sum(p.missing for p in todo), shutil.disk_usage(root).free
    if need > free:
        raise CheckpointError(
            f"not enough disk space in {root}: "
            f"{need / 2**30:.1f} GiB to download, {free / 2**30:.1f} GiB free",
            hint="free some space or choose another --dest",
        )
