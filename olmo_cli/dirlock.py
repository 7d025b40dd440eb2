"""One job per output directory: an exclusive `flock` on `DIR/.olmo.lock` while a job writes into DIR.

`olmo train`, `resume` and `finetune` hold it on their run directory, `olmo data tokenize` on its output.
A second job finds the lock taken and is refused at once, naming the holder, whose PID, host, command and
start time the lock file records as text. The kernel drops an flock when its holder dies however it dies
(kill -9 included), so a lock file left behind by a dead job is only information: the next job locks it
and takes over. The file's content is never trusted beyond showing it.

A job that hands its directory to child processes (`--nproc-per-node N` relaunching under torchrun) keeps
holding the lock itself and gives its children the lock's token in `TOKEN_ENV`; a child that finds the
lock taken by a holder with that token is covered by it instead of refused.
"""

from __future__ import annotations

import errno
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from olmo_cli.errors import OlmoError, UsageError

__all__ = [
    "LOCK_NAME",
    "TOKEN_ENV",
    "DirectoryLock",
    "Holder",
    "lock_directory",
    "lock_run_dir",
    "waiting_lock",
]

LOCK_NAME = ".olmo.lock"
TOKEN_ENV = "OLMO_DIR_LOCK_TOKEN"
_MAX_READ = 4096  # a lock file is a few lines; anything longer is not ours
_MAX_FIELD = 300
_ATTEMPTS = 8  # the file can be replaced between opening and locking it; a few retries settle that
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the job that wrote it (any field may be missing or made up)."""

    pid: int | None = None
    host: str | None = None
    since: float | None = None  # seconds since the epoch
    command: str | None = None
    token: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> Holder:
        fields: dict[str, str] = {}
        for line in raw[:_MAX_READ].decode("utf-8", errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = _clean(value.strip())
        pid = fields.get("pid", "")
        since = fields.get("since", "")
        return cls(
            pid=int(pid) if pid.isdigit() and 0 < int(pid) < 1 << 22 else None,
            host=fields.get("host") or None,
            since=float(since) if _is_number(since) else None,
            command=fields.get("command") or None,
            token=fields.get("token") or None,
        )

    def text(self) -> str:
        return "".join(
            f"{key}: {_clean(str(value))}\n"
            for key, value in (
                ("pid", self.pid),
                ("host", self.host),
                ("since", f"{self.since:.3f}" if self.since is not None else None),
                ("started", _clock(self.since) if self.since is not None else None),
                ("command", self.command),
                ("token", self.token),
            )
            if value is not None
        )

    def describe(self, *, held: bool = True) -> str:
        """E.g. `PID 4711 on host gpu-3 (olmo train --preset tiny), since 2026-03-01 12:00:05 (3 min ago)`."""
        who = f"PID {self.pid}" if self.pid is not None else "a process"
        if self.host:
            who += f" on host {self.host}"
        if self.command:
            shown = self.command if len(self.command) <= 80 else self.command[:77] + "..."
            who += f" ({shown})"
        if self.since is not None:
            who += f", since {_clock(self.since)} ({_ago(time.time() - self.since)})"
        if held and self.host == socket.gethostname() and self.pid is not None and not _alive(self.pid):
            who += "; that process has exited, a process it started still holds the lock"
        return who


class DirectoryLock:
    """A held lock (or a stand-in for one: `covered` by a parent's, `unsupported` by the file system).
    `release()` (or leaving the `with` block) gives it up and removes the lock file."""

    def __init__(
        self,
        directory: Path,
        *,
        fd: int | None,
        token: str,
        created_directory: bool = False,
        recovered: Holder | None = None,
        covered: bool = False,
        unsupported: bool = False,
    ) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self.token = token
        self.recovered = recovered  # the holder a stale lock file named, when we took it over
        self.covered = covered  # held already, by this process or the one that started it (TOKEN_ENV)
        self.unsupported = unsupported  # the file system has no flock: nothing is locked
        self._fd = fd
        self._created_directory = created_directory

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(_key(self.directory), None)
        try:
            # Removed while still locked: a job waiting on this inode then finds it unlinked and retries.
            if _same_file(fd, self.path):
                self.path.unlink()
            if self._created_directory:
                try:
                    self.directory.rmdir()  # only if the job left nothing in it
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_directory(
    directory: Path | str,
    *,
    busy_hint: str,
    error: type[OlmoError] = UsageError,
    command: str | None = None,
) -> DirectoryLock:
    """Locks `directory` (created if missing) for this process, or raises `error` naming the holder.

    `busy_hint` tells the refused user what to do instead. `command` is recorded for the next one to
    read (default: this process's olmo command line).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise error(f"{directory} is a file, not a directory", hint="name a directory")
    mine = _HELD.get(_key(directory))
    if mine is not None:  # e.g. the command locked the run directory before the engine asks again
        return DirectoryLock(directory, fd=None, token=mine.token, covered=True)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(
            f"cannot create {directory}: {e.strerror or e}", hint="name a directory you can write"
        ) from None
    path = directory / LOCK_NAME
    me = Holder(
        pid=os.getpid(),
        host=socket.gethostname(),
        since=time.time(),
        command=command or _command_line(),
        token=secrets.token_hex(16),
    )
    for _ in range(_ATTEMPTS):
        fd = _open(path, error)
        try:
            locked = _try_lock(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in _UNSUPPORTED:
                return DirectoryLock(directory, fd=None, token=me.token or "", unsupported=True)
            raise error(
                f"cannot lock {path}: {e.strerror or e}", hint="check the directory's permissions"
            ) from None
        if not locked:
            holder = Holder.parse(_read(fd))
            os.close(fd)
            inherited = os.environ.get(TOKEN_ENV)
            if inherited and holder.token == inherited:
                return DirectoryLock(directory, fd=None, token=inherited, covered=True)
            raise error(f"{directory} is in use by another olmo job: {holder.describe()}", hint=busy_hint)
        if not _same_file(fd, path):  # unlinked by its last holder after we opened it: open afresh
            os.close(fd)
            continue
        previous = _read(fd)
        _write(fd, me.text())
        recovered = Holder.parse(previous) if previous.strip() else None
        lock = _HELD[_key(directory)] = DirectoryLock(
            directory, fd=fd, token=me.token or "", created_directory=created, recovered=recovered
        )
        return lock
    raise error(f"cannot lock {path}: it keeps being replaced", hint="try again")


def _key(directory: Path) -> str:
    return str(directory.resolve())


# The locks this process holds, by directory: asking again for one of them is not a conflict.
_HELD: dict[str, DirectoryLock] = {}


def lock_run_dir(run_dir: Path | str) -> DirectoryLock:
    """A training run's directory (train, resume, finetune): refused with UsageError (exit 2)."""
    return lock_directory(
        run_dir,
        busy_hint=f"wait for that job to end, or stop it (SIGTERM or Ctrl-C saves a checkpoint) and then "
        f"`olmo resume {run_dir}`; --save-folder DIR trains elsewhere",
    )


@contextmanager
def waiting_lock(lock_file: Path) -> Iterator[None]:
    """Held by one process at a time, the others waiting their turn (for work done once for all, such as
    filling a cache); the system drops it when its holder dies. A no-op without fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open(path: Path, error: type[OlmoError]) -> int:
    try:
        # O_NOFOLLOW: a planted symlink must not make us write through it to somewhere else.
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link", hint=f"remove {path}; olmo writes it itself") from None
        raise error(
            f"cannot open {path}: {e.strerror or e}", hint="check the directory's permissions"
        ) from None


def _try_lock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, _MAX_READ, 0)
    except OSError:
        return b""


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # the content only informs a refused job; the lock itself is held


def _command_line() -> str:
    return "olmo " + shlex.join(sys.argv[1:])


def _clean(text: str) -> str:
    """One printable line of bounded length: the file may have been written by anyone."""
    return "".join(c if c.isprintable() else "?" for c in text)[:_MAX_FIELD]


def _is_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return 0 <= value < 1e11


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True
