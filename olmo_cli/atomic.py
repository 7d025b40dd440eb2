"""Atomic file writes (docs/architecture.md rule 5): write to a temporary sibling, flush and fsync, rename.

A reader, or a re-run after a crash, sees either the old file or the whole new one, never a prefix.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open directories; the rename still happened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path | str, *, tmp_dir: Path | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing that becomes `path` only if the block completes.

    `tmp_dir` must be on the same filesystem as `path` (default: beside it) so the rename is atomic.
    """
    path = Path(path)
    directory = tmp_dir or path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 (not mkstemp's 0o600) so the result has the permissions the umask gives any file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_output_dir(output: Path | str, overwrite: bool, option: str = "--output") -> None:
    """Raises UsageError when `output` is a file, a non-empty directory while `overwrite` is off, or a
    place that cannot be created or written; called before the work that fills it, so nothing is
    computed only to be refused."""
    from olmo_cli.errors import UsageError

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{option} {output} is a file", hint="name a directory (new or empty)")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"{option} {output} already exists and is not empty", hint="pass --overwrite")
    check_writable(output, option)


def check_output_file(output: Path | str, option: str = "--output") -> None:
    """Raises UsageError when the file `output` could not be written (a directory there, a parent that
    is a file or cannot be created or written), before any work."""
    from olmo_cli.errors import UsageError

    output = Path(output)
    if output.is_dir():
        raise UsageError(f"{option} {output} is a directory", hint="name a file, e.g. results.json")
    check_writable(output.parent if str(output.parent) else Path("."), option, target=output)


def check_writable(directory: Path | str, option: str = "--output", *, target: Path | None = None) -> None:
    """Raises UsageError unless `directory` exists as a writable directory or could be created: its
    nearest existing ancestor must be a directory where a file can be created (probed by creating and
    removing one, which also catches read-only mounts and pseudo-filesystems where permission bits say
    nothing, e.g. when running as root). Creates nothing that stays."""
    from olmo_cli.errors import UsageError

    directory = Path(directory)
    shown = target if target is not None else directory
    probe_dir = next((p for p in (directory, *directory.parents) if p.exists() or p.is_symlink()), Path("."))
    if not probe_dir.is_dir():
        raise UsageError(
            f"cannot create {option} {shown}: {probe_dir} is a file, not a directory",
            hint="name a location under a directory",
        )
    probe = probe_dir / f".olmo-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise UsageError(
            f"cannot write {option} {shown}: {probe_dir}: {e.strerror or e}",
            hint="name a location you can write",
        ) from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def current_umask() -> int:
    """The process umask, read without changing it (Linux exposes it in /proc; elsewhere it is set and
    put back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path: Path | str) -> None:
    """Gives a file written by a library that creates it 0600 (safetensors) the mode of any other file."""
    os.chmod(path, 0o666 & ~current_umask())


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, also as reported by libraries that wrap the OS error in their own (safetensors)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text or "StorageFull" in text


def disk_full_error(path: Path | str, needed: int | None, error_class: type | None = None) -> Exception:
    """The one message for a write that ran out of space: where, how much it needed, how much is free."""
    import shutil

    from olmo_cli.errors import CheckpointError

    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    need = f"it needs about {_size(needed)}" if needed else "it needs more space"
    have = f", {_size(free)} is free" if free is not None else ""
    cls = error_class or CheckpointError
    return cls(
        f"no space left on the device while writing {path}: {need}{have}",
        hint="free some space (or write elsewhere) and run the command again; nothing partial was kept",
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
