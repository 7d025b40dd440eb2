"""Moving one chunk of one file from the server into its part file, with retries; then verifying it.

Each worker thread owns one chunk at a time. A try that fails with a transient error (connection
dropped, timeout, truncated body, 5xx) is retried from the bytes already written, after a backoff;
a try that moved bytes resets the count, so a long download survives any number of spread-out drops.
"""

from __future__ import annotations

import errno
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from olmo_cli.errors import CheckpointError, NetworkError, OlmoError
from olmo_cli.hub.checksum import file_digest
from olmo_cli.hub.events import FileKey, Retrying
from olmo_cli.hub.http import (
    RetryPolicy,
    Transient,
    as_network_error,
    check_status,
    is_http_error,
    is_transient_error,
    request,
)
from olmo_cli.hub.listing import RemoteFile
from olmo_cli.hub.partfile import PartFile

if TYPE_CHECKING:
    import requests

__all__ = [
    "Cancelled",
    "DiskFull",
    "Fetcher",
    "Job",
    "PlanMismatch",
    "fetch_chunk",
    "local_write_error",
    "verify_and_commit",
]

BLOCK = 4 << 20  # bytes per read from an HTTP body
STORE_BLOCK = 16 << 20  # bytes per ranged request to an object store
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_TRANSIENT_NAMES = ("Connection", "Timeout", "IncompleteRead", "Throttl", "SlowDown")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class Cancelled(Exception):
    """Another file failed or the user interrupted: stop, keeping what was written."""


class PlanMismatch(NetworkError):
    """A GET's answer disagrees with the plan made from the HEAD: the file changed, or the server lies.
    The download re-plans once; a second disagreement is the error the user sees."""

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        super().__init__(
            f"{url}: {what}",
            hint="the file may have changed on the server during the download: run the same command "
            "again; if this repeats, the server reports sizes or versions it does not send",
        )


class DiskFull(CheckpointError):
    """The destination's file system is full (or over quota); the download adds how much is needed."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no space left on the device writing {path}")
        self.path = path


def local_write_error(exc: OSError, path: Path) -> CheckpointError:
    """A failure of the local disk (not the network), as the one message a user sees."""
    if exc.errno in _DISK_FULL:
        return DiskFull(path)
    return CheckpointError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="check the free space and permissions of --dest, then run the same command again",
    )


@dataclass
class Job:
    """One file of one checkpoint being downloaded."""

    key: FileKey
    remote: RemoteFile
    part: PartFile
    on_disk: int  # bytes there before this run
    received: list[int] = field(default_factory=list)  # bytes received this run, per chunk
    verified_by: str | None = None  # set once the file has its final name
    deadline: float | None = None  # time.monotonic() by which the file must be done; set on first fetch

    def start_clock(self, policy: RetryPolicy) -> None:
        if self.deadline is None:  # two chunks starting together set nearly the same value: harmless
            self.deadline = time.monotonic() + policy.file_deadline(self.remote.size)

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def check_deadline(self, policy: RetryPolicy) -> None:
        if self.left() <= 0:
            size = "?" if self.remote.size is None else str(self.remote.size)
            raise NetworkError(
                f"{self.remote.url}: not downloaded within {policy.file_deadline(self.remote.size):.0f}s "
                f"({self.part.done()} of {size} bytes)",
                hint="the server is too slow or stalls; try again later (the bytes downloaded so far are "
                "kept and the same command continues from them), or use another mirror",
            )


@dataclass
class Fetcher:
    policy: RetryPolicy
    cancel: threading.Event
    report: Callable[[Retrying], None]  # thread-safe; delivered to the caller's thread later


def fetch_chunk(job: Job, i: int, fetcher: Fetcher) -> None:
    """Fetch what is missing of chunk i, retrying transient failures per the policy."""
    policy = fetcher.policy
    job.start_clock(policy)
    failures = 0
    progressed = time.monotonic()  # when a try last moved a window's worth of bytes
    while True:
        start, end = job.part.position(i)
        if end is not None and start >= end:
            return
        if fetcher.cancel.is_set():
            raise Cancelled
        job.check_deadline(policy)
        before = job.part.cursors[i]
        try:
            if job.remote.store:
                _store_once(job, i, start, end, fetcher)
            else:
                _http_once(job, i, start, end, fetcher)
            if end is None:
                return  # unknown size: the body ended, that is the file
        except (Cancelled, OlmoError):
            raise
        except Exception as exc:
            if not is_transient_error(exc):
                if isinstance(exc, OSError) and not is_http_error(exc):  # the local disk, not the network
                    raise local_write_error(exc, job.part.data_path) from exc
                raise as_network_error(exc, job.remote.url) from exc
            # Only a try that moved a window's worth resets the count: a trickle is not progress.
            moved = job.part.cursors[i] - before
            if moved >= policy.progress_bytes:
                failures, progressed = 1, time.monotonic()
            else:
                failures += 1
            delay = policy.delay(failures)
            stalled = time.monotonic() - progressed
            # A silent or trickling server makes no progress however the tries end: bound that time too.
            if failures >= policy.attempts or stalled + delay > policy.deadline_grace_s:
                raise NetworkError(
                    f"{job.remote.url}: giving up after {failures} failed tries in a row "
                    f"({stalled:.0f}s without progress): {_reason(exc)}",
                    hint="check the network, then run the same command again: it continues where it stopped",
                ) from exc
            fetcher.report(Retrying(job.key, job.remote.url, failures, _reason(exc), delay))
            if fetcher.cancel.wait(max(0.0, min(delay, job.left()))):
                raise Cancelled from None


def _reason(exc: BaseException) -> str:
    """One short line: urllib3 wraps its message in a tuple with the cause repeated."""
    if isinstance(exc, Transient):
        return str(exc)
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.splitlines()[0] if first else type(exc).__name__
    return text[:200]


def _timeout(job: Job, policy: RetryPolicy) -> tuple[float, float]:
    """The policy's timeouts, cut to what is left of the file's deadline."""
    left = max(job.left(), 0.05)
    return (min(policy.connect_timeout_s, left), min(policy.read_timeout_s, left))


def _check_validators(job: Job, response: requests.Response) -> None:
    """The answer is of the version the plan was made for (ETag, else Last-Modified)."""
    remote, url = job.remote, job.remote.url
    etag = response.headers.get("ETag")
    if remote.etag and etag and not etag.startswith("W/") and etag != remote.etag:
        raise PlanMismatch(
            url, f"the file changed on the server since it was planned (ETag {remote.etag}, now {etag})"
        )
    modified = response.headers.get("Last-Modified")
    if not remote.etag and remote.last_modified and modified and modified != remote.last_modified:
        raise PlanMismatch(
            url,
            f"the file changed on the server since it was planned "
            f"(Last-Modified {remote.last_modified}, now {modified})",
        )


def _content_length(response: requests.Response, url: str) -> int | None:
    raw = response.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise NetworkError(f"{url}: the server sent an invalid Content-Length {raw[:40]!r}")
    return int(raw)


def _check_whole(job: Job, response: requests.Response) -> None:
    """A 200 answer: its length is the planned size."""
    planned, length = job.remote.size, _content_length(response, job.remote.url)
    if planned is not None and length is not None and length != planned:
        raise PlanMismatch(
            job.remote.url,
            f"the server announced {planned} bytes (HEAD) but sends {length} (GET Content-Length)",
        )


def _check_range(job: Job, response: requests.Response, start: int, end: int | None) -> int | None:
    """A 206 answer: it starts where asked, is of a file of the planned size; where it ends."""
    url, planned = job.remote.url, job.remote.size
    header = response.headers.get("Content-Range", "")
    match = _CONTENT_RANGE.match(header)
    if not match or int(match[1]) != start or int(match[2]) < start:
        raise Transient(f"asked for bytes from {start}, got {header[:80] or 'no Content-Range'}")
    first, last, total = int(match[1]), int(match[2]), match[3]
    if planned is not None and total != "*" and int(total) != planned:
        raise PlanMismatch(
            url,
            f"the server announced {planned} bytes (HEAD) but its range answer says {total} "
            "(GET Content-Range)",
        )
    if end is not None and last + 1 > end:
        raise Transient(f"asked for bytes {start}-{end - 1}, got {header[:80]}")
    length = _content_length(response, url)
    if length is not None and length != last - first + 1:
        raise NetworkError(f"{url}: Content-Length {length} disagrees with Content-Range {header[:80]}")
    return last + 1 if end is not None else None


def _http_once(job: Job, i: int, start: int, end: int | None, fetcher: Fetcher) -> None:
    url, part = job.remote.url, job.part
    assert part.layout is not None
    ranged = start > 0 or part.layout.chunks > 1
    headers = dict(job.remote.headers)
    if ranged:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        validator = job.remote.etag or job.remote.last_modified
        if validator:  # the server sends the whole (new) file if it changed since
            headers["If-Range"] = validator
    with request("GET", url, headers=headers, timeout=_timeout(job, fetcher.policy)) as response:
        check_status(response, url)
        if response.status_code not in (200, 206):
            raise NetworkError(f"{url}: unexpected answer HTTP {response.status_code} {response.reason}")
        if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
            raise NetworkError(f"{url}: the server compressed the file although asked not to")
        _check_validators(job, response)
        if response.status_code == 200:
            _check_whole(job, response)
            if ranged:
                if part.layout.chunks > 1:
                    raise NetworkError(
                        f"{url} answered a byte-range request with the whole file",
                        hint="the file changed on the server during the download, or the server stopped "
                        "accepting ranges; run the same command again",
                    )
                part.rewind(i)
                start = 0
        else:
            end = _check_range(job, response, start, end)
        # read1 hands over what has arrived (up to BLOCK) at once, so a connection that breaks loses
        # nothing already received; urllib3 1.x lacks it, and its read waits for the whole BLOCK.
        read = getattr(response.raw, "read1", None) or response.raw.read
        _copy_body(job, i, read, start, end, fetcher)
        if end is not None and "Content-Length" not in response.headers and read(1, decode_content=False):
            # No length to stop at: a body that goes on past the planned size is another file.
            raise PlanMismatch(url, f"the server announced {job.remote.size} bytes (HEAD) but sends more")


def _copy_body(
    job: Job, i: int, read: Callable[..., bytes], pos: int, end: int | None, fetcher: Fetcher
) -> None:
    policy, cancel = fetcher.policy, fetcher.cancel
    start = pos
    window_start, window_bytes = time.monotonic(), 0
    while end is None or pos < end:
        if cancel.is_set():
            raise Cancelled
        data = read(BLOCK if end is None else min(BLOCK, end - pos), decode_content=False)
        if not data:
            if end is None:
                return
            raise Transient(f"connection closed {pos - start} bytes into a {end - start}-byte body")
        job.part.write(i, pos, data)
        job.received[i] += len(data)
        pos += len(data)
        window_bytes += len(data)
        elapsed = time.monotonic() - window_start
        if elapsed >= policy.rate_window_s:
            if window_bytes < policy.min_rate * elapsed:
                raise Transient(
                    f"too slow: {window_bytes} bytes in {elapsed:.1f}s "
                    f"(the least accepted is {policy.min_rate:.0f} bytes/s)"
                )
            window_start, window_bytes = time.monotonic(), 0
        job.check_deadline(policy)


def _store_once(job: Job, i: int, start: int, end: int | None, fetcher: Fetcher) -> None:
    from cached_path.schemes import get_scheme_client

    if end is None:
        raise NetworkError(f"{job.remote.url}: the store did not report the file's size")
    client = get_scheme_client(job.remote.url)
    pos = start
    while pos < end:
        if fetcher.cancel.is_set():
            raise Cancelled
        try:
            data = client.get_bytes_range(pos, min(STORE_BLOCK, end - pos))
        except FileNotFoundError as exc:
            raise NetworkError(f"{job.remote.url} does not exist any more", hint="check the index") from exc
        except Exception as exc:  # noqa: BLE001 - boto/google raise their own types
            if any(name in type(exc).__name__ for name in _TRANSIENT_NAMES):
                raise Transient(f"{type(exc).__name__}: {exc}") from exc
            raise NetworkError(f"{job.remote.url}: {type(exc).__name__}: {exc}") from exc
        if not data:
            raise Transient(f"empty answer for bytes {pos}-{end - 1}")
        data = data[: end - pos]
        job.part.write(i, pos, data)
        job.received[i] += len(data)
        pos += len(data)


def _mismatch(job: Job) -> str | None:
    """Why the part's bytes are not the remote file, or None if they are (size, then checksum)."""
    size, remote = job.part.size_on_disk(), job.remote
    expected = remote.size if remote.size is not None else job.part.cursors[0]
    if size < expected or job.part.done() != expected:
        return f"size {job.part.done()} instead of {expected}"
    if remote.checksum is not None:
        digest = file_digest(job.part.data_path, remote.checksum.algorithm)
        if digest != remote.checksum.hexdigest:
            return f"{remote.checksum.algorithm} {digest} instead of {remote.checksum.hexdigest}"
    return None


def verify_and_commit(job: Job, fetcher: Fetcher) -> None:
    """Check the finished part against what the server said; fetch it once more if it is wrong."""
    problem = _mismatch(job)
    if problem is not None:
        fetcher.report(Retrying(job.key, job.remote.url, 1, f"downloaded file is wrong ({problem})", 0.0))
        job.part.restart()
        for i in range(job.part.layout.chunks if job.part.layout else 1):
            fetch_chunk(job, i, fetcher)
        problem = _mismatch(job)
        if problem is not None:
            raise CheckpointError(
                f"{job.remote.url} does not match what the server announced, twice: {problem}",
                hint="the server's copy may be damaged or changing; try again later",
            )
    checksum = job.remote.checksum
    try:
        job.part.commit()
    except OSError as exc:
        raise local_write_error(exc, job.part.final) from exc
    # Last: the calling thread finishes the checkpoint once every job has this set.
    job.verified_by = f"{checksum.algorithm} ({checksum.source})" if checksum else "size"
