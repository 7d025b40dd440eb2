"""Durable writes for checkpoint files whose writer wants a path, not a file object (safetensors)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from olmo_cli.atomic import fsync_dir, give_umask_mode

__all__ = ["fsync_file", "write_atomically"]


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` to a sibling temporary name, fsync it, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        give_umask_mode(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
