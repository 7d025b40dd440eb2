"""Local names for remote things, kept inside the destination whatever an index or a server says."""

from __future__ import annotations

import os
from pathlib import Path

from olmo_cli.errors import CheckpointError

__all__ = ["PARTIAL_SUFFIX", "checkpoint_dirs", "safe_child"]

# A checkpoint being downloaded lives here until every file is verified; `find_latest_checkpoint`
# and upstream's `step*` search ignore the name, so a half-downloaded checkpoint is never loaded.
PARTIAL_SUFFIX = ".partial"


def safe_child(root: Path, name: str) -> Path:
    """`root / name` for a single plain path component `name`; anything else is refused.

    Refused: empty names, `.`/`..`, separators of any platform, NUL, drive letters, and a child that is
    a symbolic link (writing through it could land anywhere).
    """
    bad = (
        not name
        or name in {".", ".."}
        or any(sep in name for sep in ("/", "\\", "\0"))
        or (len(name) >= 2 and name[1] == ":")
        or name != name.strip()
    )
    if bad:
        raise CheckpointError(
            f"refusing to write {name!r}: not a plain file name inside {root}",
            hint="the index or the server gave an unsafe name; check where the index comes from",
        )
    child = root / name
    if child.is_symlink():
        raise CheckpointError(
            f"refusing to write through the symbolic link {child}",
            hint="remove the link, or choose another --dest",
        )
    # Belt and braces: the resolved parent must be the resolved root.
    if os.path.realpath(child.parent) != os.path.realpath(root):
        raise CheckpointError(f"refusing to write {name!r}: it resolves outside {root}")
    return child


def checkpoint_dirs(dest: Path, step: int) -> tuple[Path, Path]:
    """(final, partial) directories for checkpoint `step` under `dest`: `step{N}-unsharded[.partial]`.

    The `-unsharded` suffix matters: upstream decides how to load a checkpoint by that suffix alone.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"refusing to use {step!r} as a step: not a non-negative integer")
    name = f"step{step}-unsharded"
    return safe_child(dest, name), safe_child(dest, name + PARTIAL_SUFFIX)
