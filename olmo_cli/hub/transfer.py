"""Moving one chunk of one file from the server into its part file, with retries; then verifying it.

Each worker thread owns one chunk at a time. A try that fails with a transient error (connection
dropped, timeout, truncated body, 5xx) is retried from the bytes already written, after a backoff;
a try that moved bytes resets the count, so a long download survives any number of spread-out drops.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from olmo_cli.errors import CheckpointError, NetworkError
from olmo_cli.hub.checksum import file_digest
from olmo_cli.hub.events import FileKey, Retrying
from olmo_cli.hub.http import RetryPolicy, Transient, check_status, is_transient_error, session
from olmo_cli.hub.listing import RemoteFile
from olmo_cli.hub.partfile import PartFile

__all__ = ["Cancelled", "Fetcher", "Job", "fetch_chunk", "verify_and_commit"]

BLOCK = 4 << 20  # bytes per read from an HTTP body
STORE_BLOCK = 16 << 20  # bytes per ranged request to an object store
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_TRANSIENT_NAMES = ("Connection", "Timeout", "IncompleteRead", "Throttl", "SlowDown")


class Cancelled(Exception):
    """Another file failed or the user interrupted: stop, keeping what was written."""


@dataclass
class Job:
    """One file of one checkpoint being downloaded."""

    key: FileKey
    remote: RemoteFile
    part: PartFile
    on_disk: int  # bytes there before this run
    received: list[int] = field(default_factory=list)  # bytes received this run, per chunk
    verified_by: str | None = None  # set once the file has its final name


@dataclass
class Fetcher:
    policy: RetryPolicy
    cancel: threading.Event
    report: Callable[[Retrying], None]  # thread-safe; delivered to the caller's thread later


def fetch_chunk(job: Job, i: int, fetcher: Fetcher) -> None:
    """Fetch what is missing of chunk i, retrying transient failures per the policy."""
    failures = 0
    while True:
        start, end = job.part.position(i)
        if end is not None and start >= end:
            return
        if fetcher.cancel.is_set():
            raise Cancelled
        before = job.part.cursors[i]
        try:
            if job.remote.store:
                _store_once(job, i, start, end, fetcher)
            else:
                _http_once(job, i, start, end, fetcher)
            if end is None:
                return  # unknown size: the body ended, that is the file
        except Cancelled:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and not is_transient_error(exc):  # the local disk, not the network
                raise CheckpointError(
                    f"cannot write {job.part.data_path}: {exc.strerror or exc}",
                    hint="check the free space and permissions of --dest, then run the same command again",
                ) from exc
            if not is_transient_error(exc):
                raise
            failures = 1 if job.part.cursors[i] > before else failures + 1
            if failures >= fetcher.policy.attempts:
                raise NetworkError(
                    f"{job.remote.url}: giving up after {failures} failed tries in a row: {exc}",
                    hint="check the network, then run the same command again: it continues where it stopped",
                ) from exc
            delay = fetcher.policy.delay(failures)
            fetcher.report(Retrying(job.key, job.remote.url, failures, _reason(exc), delay))
            if fetcher.cancel.wait(delay):
                raise Cancelled from None


def _reason(exc: BaseException) -> str:
    """One short line: urllib3 wraps its message in a tuple with the cause repeated."""
    if isinstance(exc, Transient):
        return str(exc)
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.splitlines()[0] if first else type(exc).__name__
    return text[:200]


def _http_once(job: Job, i: int, start: int, end: int | None, fetcher: Fetcher) -> None:
    url, part = job.remote.url, job.part
    assert part.layout is not None
    ranged = start > 0 or part.layout.chunks > 1
    headers = {}
    if ranged:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if job.remote.etag:  # the server sends the whole (new) file if it changed since
            headers["If-Range"] = job.remote.etag
    with session().get(url, headers=headers, stream=True, timeout=fetcher.policy.timeout) as response:
        check_status(response, url)
        if response.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
            raise NetworkError(f"{url}: the server compressed the file although asked not to")
        if ranged and response.status_code == 200:
            if part.layout.chunks > 1:
                raise NetworkError(
                    f"{url} answered a byte-range request with the whole file",
                    hint="the file changed on the server during the download, or the server stopped "
                    "accepting ranges; run the same command again",
                )
            part.rewind(i)
            start = 0
        elif response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match[1]) != start:
                raise Transient(f"asked for bytes from {start}, got {response.headers.get('Content-Range')}")
        # read1 hands over what has arrived (up to BLOCK) at once, so a connection that breaks loses
        # nothing already received; urllib3 1.x lacks it, and its read waits for the whole BLOCK.
        read = getattr(response.raw, "read1", None) or response.raw.read
        _copy_body(job, i, read, start, end, fetcher.cancel)


def _copy_body(
    job: Job, i: int, read: Callable[..., bytes], pos: int, end: int | None, cancel: threading.Event
) -> None:
    start = pos
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
    job.part.commit()
    # Last: the calling thread finishes the checkpoint once every job has this set.
    job.verified_by = f"{checksum.algorithm} ({checksum.source})" if checksum else "size"
