"""Names of files that one file of a checkpoint gives for another, checked before they are used.

A checkpoint is data from elsewhere. Several of its files name other files or directories: the trainer
state lists earlier checkpoints, DCP metadata names the files holding each tensor (`relative_path`), a
Hugging Face `*.index.json` maps tensors to weight files. Each such value may only be the plain name
of a direct child of the directory it belongs to: no separators, no `.` or `..`, no absolute path, and
no symlink that leads out of the directory. So a file outside the checkpoint is never read (and,
through retention, never deleted) because a file inside it says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from olmo_cli.errors import CheckpointError

__all__ = ["bad_child_name", "checked_child", "inside"]

_MAX_NAME_BYTES = 255  # what common file systems allow for one name


def bad_child_name(value: object) -> str | None:
    """Why `value` is not the plain name of a direct child of a directory, or None when it is one."""
    if not isinstance(value, str):
        return f"a {type(value).__name__}, not a file name"
    if value in ("", ".", ".."):
        return "not a file name"
    if "/" in value or "\\" in value:
        return "a path with separators, not the name of a file in the directory"
    if "\0" in value or any(ord(c) < 32 for c in value):
        return "a name with control characters"
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        return f"a name longer than {_MAX_NAME_BYTES} bytes"
    if len(value) >= 2 and value[1] == ":":
        return "a drive-letter path"
    return None


def inside(path: Path, directory: Path) -> bool:
    """Whether `path`, with every symlink resolved, lies in `directory` (also resolved)."""
    try:
        target = Path(os.path.realpath(path))
        root = Path(os.path.realpath(directory))
    except (OSError, ValueError):
        return False
    return target == root or root in target.parents


def checked_child(
    directory: Path, value: object, *, field: str, source: Path | str, extra_root: Path | None = None
) -> Path:
    """`directory / value` once `value` is a plain child name whose file, if it is a symlink, stays in
    `directory` (or in `extra_root`, for layouts that keep blobs beside the directory). Raises
    CheckpointError naming the file that gave the value and the field it was in."""
    why = bad_child_name(value)
    if why is None:
        path = directory / str(value)
        if path.is_symlink() and not (
            inside(path, directory) or (extra_root is not None and inside(path, extra_root))
        ):
            why = "a symlink that leads outside the checkpoint directory"
        else:
            return path
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise CheckpointError(
        f"{source}: {field} names {shown}, {why}; refused",
        hint="a checkpoint may only refer to files directly inside its own directory; this one is damaged "
        "or was crafted to reach files elsewhere",
    )
