"""Downloading checkpoints: plan what is missing, fetch it in parallel, verify, and put it in place.

Layout under the destination: `step{N}-unsharded/` for a complete checkpoint (with the manifest
`.olmo-download.json`, written last, as its completion marker); `step{N}-unsharded.partial/` while
it is being downloaded. Inside the partial directory a file has its final name only once verified,
and the directory is renamed into place only when every file is. Re-running the same command after
any interruption (kill -9 included) continues from the bytes on disk; see `partfile`.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo_cli.atomic import atomic_write_text, fsync_dir
from olmo_cli.errors import CheckpointError
from olmo_cli.hub.events import CheckpointDone, DownloadEvent, FileDone, FileStarted, Progress, Retrying
from olmo_cli.hub.http import RetryPolicy
from olmo_cli.hub.index import IndexEntry
from olmo_cli.hub.listing import RemoteFile, list_checkpoint_files
from olmo_cli.hub.partfile import PartFile, bytes_on_disk
from olmo_cli.hub.paths import checkpoint_dirs, safe_child
from olmo_cli.hub.space import check_space, existing, human_size
from olmo_cli.hub.transfer import (
    Cancelled,
    DiskFull,
    Fetcher,
    Job,
    PlanMismatch,
    fetch_chunk,
    local_write_error,
    verify_and_commit,
)

__all__ = [
    "MARKER",
    "CheckpointPlan",
    "DownloadOptions",
    "FilePlan",
    "download",
    "plan_download",
]

MARKER = ".olmo-download.json"
EVENT_INTERVAL_S = 0.1


@dataclass(frozen=True)
class DownloadOptions:
    jobs: int = 8
    chunk_size: int = 64 << 20
    """Files larger than this are fetched in ranges of this size, in parallel (servers that take ranges)."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    hf_endpoint: str = "https://huggingface.co"


@dataclass(frozen=True)
class FilePlan:
    remote: RemoteFile
    on_disk: int  # bytes already downloaded (a finished file counts whole)

    def as_dict(self) -> dict[str, Any]:
        return {**self.remote.as_dict(), "on_disk": self.on_disk}


@dataclass(frozen=True)
class CheckpointPlan:
    step: int
    url: str
    final: Path
    partial: Path
    files: tuple[FilePlan, ...]
    complete: bool  # already downloaded and matching the server's sizes

    @property
    def size(self) -> int:
        return sum(f.remote.size or 0 for f in self.files)

    @property
    def missing(self) -> int:
        return 0 if self.complete else sum(max((f.remote.size or 0) - f.on_disk, 0) for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "url": self.url,
            "path": str(self.final),
            "complete": self.complete,
            "size": self.size,
            "to_fetch": self.missing,
            "files": [f.as_dict() for f in self.files],
        }


# ---------------------------------------------------------------------------------------------------
# planning


def _is_complete(final: Path, files: Sequence[RemoteFile]) -> bool:
    if not (final / MARKER).is_file():
        return False
    return all((final / f.name).is_file() and (final / f.name).stat().st_size == f.size for f in files)


def _check_final(final: Path) -> None:
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise CheckpointError(f"{final} exists and is not a directory", hint="move it away or choose --dest")
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).is_file():
        raise CheckpointError(
            f"{final} exists and was not written by `olmo checkpoints download`",
            hint="choose another --dest, or move that directory away",
        )


def plan_checkpoint(entry: IndexEntry, dest: Path, options: DownloadOptions) -> CheckpointPlan:
    """What the server has for one checkpoint, and how much of it is already on disk."""
    final, partial = checkpoint_dirs(dest, entry.step)
    _check_final(final)
    remote = list_checkpoint_files(
        entry.url, policy=options.policy, jobs=options.jobs, hf_endpoint=options.hf_endpoint
    )
    complete = _is_complete(final, remote)
    files = []
    for f in remote:
        have = 0
        if complete or ((final / MARKER).is_file() and (final / f.name).is_file()):
            have = f.size if (final / f.name).stat().st_size == f.size else 0
        if not have and partial.is_dir() and not partial.is_symlink():
            have = bytes_on_disk(partial, f.name, f.size, f.etag)
        files.append(FilePlan(f, have or 0))
    return CheckpointPlan(entry.step, entry.url, final, partial, tuple(files), complete)


def plan_download(
    entries: Sequence[IndexEntry], dest: Path, options: DownloadOptions
) -> list[CheckpointPlan]:
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"--dest {dest} is a file", hint="give a directory")
    unique = {e.step: e for e in entries}  # one directory per step
    return [plan_checkpoint(e, dest, options) for e in unique.values()]


# ---------------------------------------------------------------------------------------------------
# running


def _prepare_partial(plan: CheckpointPlan) -> None:
    """Create the partial directory; take over the files of an earlier, now outdated, download."""
    plan.partial.parent.mkdir(parents=True, exist_ok=True)
    plan.partial.mkdir(exist_ok=True)
    if plan.final.is_dir() and (plan.final / MARKER).is_file():  # ours, but the server's files changed
        for child in plan.final.iterdir():
            if child.name != MARKER and child.is_file() and not (plan.partial / child.name).exists():
                child.replace(plan.partial / child.name)
        shutil.rmtree(plan.final)
    elif plan.final.is_dir():
        plan.final.rmdir()  # empty (_check_final refused anything else)


def _open_jobs(plan: CheckpointPlan, options: DownloadOptions) -> list[Job]:
    jobs = []
    for f in plan.files:
        remote = f.remote
        done = safe_child(plan.partial, remote.name)
        if done.is_file():
            if done.stat().st_size == remote.size:
                continue  # verified and renamed by an earlier run
            done.unlink()
        part = PartFile(plan.partial, remote.name)
        # Without byte ranges a file is one stream from its first byte, and cannot be resumed.
        chunk = options.chunk_size if remote.ranges or remote.store else 1 << 62
        on_disk = part.open(remote.url, remote.size, remote.etag, chunk)
        assert part.layout is not None
        jobs.append(Job((plan.step, remote.name), remote, part, on_disk, [0] * part.layout.chunks))
    return jobs


def _finish_checkpoint(plan: CheckpointPlan, jobs: Sequence[Job]) -> None:
    verified = {job.remote.name: job.verified_by for job in jobs}
    manifest = {
        "step": plan.step,
        "url": plan.url,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [
            {**f.remote.as_dict(), "verified_by": verified.get(f.remote.name, "an earlier run")}
            for f in plan.files
        ],
    }
    for leftover in plan.partial.glob(".*.part*"):  # parts of files the server no longer has
        leftover.unlink()
    atomic_write_text(plan.partial / MARKER, json.dumps(manifest, indent=2) + "\n")
    fsync_dir(plan.partial)
    plan.partial.replace(plan.final)
    fsync_dir(plan.final.parent)


class _Run:
    """The state of one pass of a `download` call, shared by the worker threads and the calling thread."""

    def __init__(
        self, options: DownloadOptions, emit: Callable[[DownloadEvent], None], finished: set[int]
    ) -> None:
        self.options = options
        self.emit = emit
        self.cancel = threading.Event()
        self.inbox: queue.SimpleQueue[DownloadEvent] = queue.SimpleQueue()
        self.fetcher = Fetcher(options.policy, self.cancel, self.inbox.put)
        self.jobs_by_step: dict[int, list[Job]] = {}
        self.finished = finished  # steps renamed into place, by this pass or an earlier one

    def chunk(self, job: Job, i: int | None) -> None:
        if i is not None:
            try:
                fetch_chunk(job, i, self.fetcher)
            except Cancelled:
                raise
            except BaseException:
                # Stop the other workers now, not when the calling thread next looks: a freed worker
                # would otherwise start the next queued chunk of a download that has already failed.
                self.cancel.set()
                raise
        if i is None or job.part.chunk_done():
            try:
                verify_and_commit(job, self.fetcher)
            except BaseException:
                self.cancel.set()
                raise
            self.inbox.put(FileDone(job.key, job.remote.size or 0, sum(job.received), job.verified_by or ""))

    def drain(self, jobs: Sequence[Job]) -> None:
        while not self.inbox.empty():
            self.emit(self.inbox.get())
        active = {j.key: j.part.done() for j in jobs if j.verified_by is None}
        if active:
            self.emit(Progress(active))


def _tasks(jobs: Sequence[Job]) -> list[tuple[Job, int | None]]:
    """Small files first (they finish at once), then every chunk of the large ones."""
    tasks: list[tuple[Job, int | None]] = []
    for job in sorted(jobs, key=lambda j: j.remote.size or 0):
        pending = job.part.pending()
        tasks += [(job, i) for i in pending] if pending else [(job, None)]
    return tasks


def _finish_ready(
    run: _Run, plans: Sequence[CheckpointPlan], jobs_by_step: dict[int, list[Job]], finished: set[int]
) -> None:
    """Give every checkpoint whose files are all verified its final name (once)."""
    for plan in plans:
        step_jobs = jobs_by_step[plan.step]
        if plan.step not in finished and all(j.verified_by is not None for j in step_jobs):
            _finish_checkpoint(plan, step_jobs)
            finished.add(plan.step)
            run.emit(CheckpointDone(plan.step, str(plan.final)))


def _run_pool(run: _Run, plans: Sequence[CheckpointPlan], jobs_by_step: dict[int, list[Job]]) -> None:
    all_jobs = [j for js in jobs_by_step.values() for j in js]
    finished = run.finished
    error: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, run.options.jobs), thread_name_prefix="olmo-download")
    futures: set[Future[None]] = {pool.submit(run.chunk, job, i) for job, i in _tasks(all_jobs)}
    try:
        while futures:
            done, futures = wait(futures, timeout=EVENT_INTERVAL_S, return_when=FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is not None and (error is None or isinstance(error, Cancelled)):
                    error = exc
                    run.cancel.set()
            run.drain(all_jobs)
            if error is None:
                _finish_ready(run, plans, jobs_by_step, finished)
        if error is None:  # checkpoints with nothing left to fetch (stopped just before the rename)
            _finish_ready(run, plans, jobs_by_step, finished)
    except BaseException:  # Ctrl-C: stop the workers, keep what they wrote
        run.cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for job in all_jobs:
            job.part.close()
    if error is not None:
        raise error


def _disk_full(exc: DiskFull, run: _Run, plans: Sequence[CheckpointPlan]) -> CheckpointError:
    """The disk filled up during the download: how much is needed, and what is kept for the rerun."""
    need = kept = 0
    unknown = False  # a file whose size the server did not say
    for plan in plans:
        if plan.complete or plan.step in run.finished:
            continue
        jobs = run.jobs_by_step.get(plan.step)
        if jobs is None:
            need += plan.missing
            continue
        for job in jobs:
            if job.verified_by is None:
                unknown = unknown or job.remote.size is None
                need += max((job.remote.size or 0) - job.part.done(), 0)
                kept += job.part.done()
            else:
                kept += job.remote.size or 0
    root = existing(plans[0].final.parent)
    free = shutil.disk_usage(root).free
    partial = ", ".join(str(p.partial) for p in plans if p.step not in run.finished and not p.complete)
    still = f"{'at least ' if unknown else ''}{human_size(need)} ({need} bytes) still to download"
    if unknown:
        still += " (the server did not say every file's size)"
    return CheckpointError(
        f"disk full writing {exc.path}: {still}, {human_size(free)} free in {root}",
        details=[f"the {human_size(kept)} downloaded so far are kept in {partial}"],
        hint=f"free at least {human_size(max(need - free, 1))} there, then run the same command again: it "
        + ("fetches again what it cannot resume" if unknown else "resumes where it stopped")
        + " (or delete the .partial directory to give back its space)",
    )


def _download_once(run: _Run, plans: Sequence[CheckpointPlan]) -> None:
    for plan in plans:
        if plan.step in run.finished:
            continue
        if plan.complete:
            run.finished.add(plan.step)
            run.emit(CheckpointDone(plan.step, str(plan.final)))
            continue
        try:
            _prepare_partial(plan)
            jobs = _open_jobs(plan, run.options)
        except OSError as exc:
            raise local_write_error(exc, plan.partial) from exc
        run.jobs_by_step[plan.step] = jobs
        for job in jobs:
            run.emit(FileStarted(job.key, job.remote.size, job.on_disk))
    todo = [p for p in plans if p.step in run.jobs_by_step]
    if todo:
        try:
            _run_pool(run, todo, run.jobs_by_step)
        except OSError as exc:  # writing the manifest or renaming the directory
            raise local_write_error(exc, todo[0].partial) from exc


def _discard_part(plans: Sequence[CheckpointPlan], mismatch: PlanMismatch) -> list[tuple[int, str]]:
    """Delete the part of the file that disagreed with its plan: its bytes are of no known version."""
    keys = []
    for plan in plans:
        for f in plan.files:
            if f.remote.url == mismatch.url:
                PartFile(plan.partial, f.remote.name).discard()
                keys.append((plan.step, f.remote.name))
    return keys


def _replan(
    plans: Sequence[CheckpointPlan], run: _Run, mismatch: PlanMismatch, options: DownloadOptions
) -> list[CheckpointPlan]:
    """Ask the server again about every checkpoint not yet in place; drop the part that disagreed."""
    for key in _discard_part(plans, mismatch):
        run.emit(Retrying(key, mismatch.url, 1, mismatch.message, 0.0))
    dest = plans[0].final.parent
    return [
        p if p.step in run.finished else plan_checkpoint(IndexEntry(p.step, p.url, 0), dest, options)
        for p in plans
    ]


def download(
    plans: Sequence[CheckpointPlan],
    options: DownloadOptions | None = None,
    on_event: Callable[[DownloadEvent], None] | None = None,
) -> list[CheckpointPlan]:
    """Fetch what `plans` lack. Events go to `on_event` on this thread. Returns the plans done: `plans`,
    or new ones where the server's answers disagreed with them and it was asked again (once)."""
    options = options or DownloadOptions()
    emit = on_event or (lambda event: None)
    finished: set[int] = set()
    current = list(plans)
    check_space(current)
    for second in (False, True):
        run = _Run(options, emit, finished)
        try:
            _download_once(run, current)
            return current
        except DiskFull as exc:
            raise _disk_full(exc, run, current) from exc
        except PlanMismatch as exc:
            if second:
                _discard_part(current, exc)
                raise
            current = _replan(current, run, exc, options)
            check_space(current)
    raise AssertionError("unreachable")
