"""Local names for remote things, kept inside the destination whatever an index or a server says."""

from __future__ import annotations

import os
import re
from pathlib import Path

from olmo_cli.errors import CheckpointError

__all__ = [
    "PARTIAL_SUFFIX",
    "checkpoint_dirs",
    "checkpoint_name",
    "make_parents",
    "named_dirs",
    "safe_child",
    "safe_path",
]

# A checkpoint being downloaded lives here until every file is verified; `find_latest_checkpoint`
# and upstream's `step*` search ignore the name, so a half-downloaded checkpoint is never loaded.
PARTIAL_SUFFIX = ".partial"
_INGREDIENT = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


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


def safe_path(root: Path, relative: str) -> Path:
    """`root / relative` for a relative POSIX path whose every component `safe_child` accepts (and whose
    directories, where they exist, are real directories, not links); anything else is refused."""
    parts = relative.split("/")
    current = root
    for part in parts[:-1]:
        current = safe_child(current, part)
        if current.exists() and not current.is_dir():
            raise CheckpointError(f"refusing to write {relative!r}: {current} is not a directory")
    return safe_child(current, parts[-1])


def make_parents(root: Path, relative: str) -> None:
    """Create the directories of `relative` under `root`, one component at a time, never through a link."""
    current = root
    for part in relative.split("/")[:-1]:
        current = safe_child(current, part)
        current.mkdir(exist_ok=True)
        if current.is_symlink() or not current.is_dir():
            raise CheckpointError(f"refusing to write {relative!r}: {current} is not a directory")


def checkpoint_name(step: int, ingredient: str | None = None) -> str:
    """The directory name of checkpoint `step`: `step{N}-unsharded`, or for an ingredient of OLMo 2's
    stage 2 `stage2-ingredient{K}-step{N}-unsharded` (the ingredients share step numbers).

    The `-unsharded` suffix matters: upstream decides how to load a checkpoint by that suffix alone.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"refusing to use {step!r} as a step: not a non-negative integer")
    if ingredient is None:
        return f"step{step}-unsharded"
    if not isinstance(ingredient, str) or not _INGREDIENT.match(ingredient):
        raise CheckpointError(f"refusing to use {ingredient!r} as an ingredient: not a plain short name")
    return f"stage2-ingredient{ingredient}-step{step}-unsharded"


def checkpoint_dirs(dest: Path, step: int, ingredient: str | None = None) -> tuple[Path, Path]:
    """(final, partial) directories for checkpoint `step` under `dest`: `NAME` and `NAME.partial`, with
    NAME from `checkpoint_name`."""
    return named_dirs(dest, checkpoint_name(step, ingredient))


def named_dirs(dest: Path, name: str) -> tuple[Path, Path]:
    """(final, partial) directories `dest/name` and `dest/name.partial`; `name` must be a plain name."""
    return safe_child(dest, name), safe_child(dest, name + PARTIAL_SUFFIX)
