"""Downloading checkpoints: plan what is missing, fetch it in parallel, verify, and put it in place.

Layout under the destination: `step{N}-unsharded/` for a complete checkpoint (with the manifest
`.olmo-download.json`, written last, as its completion marker); `step{N}-unsharded.partial/` while
it is being downloaded. An ingredient of OLMo 2's stage 2 goes to
`stage2-ingredient{K}-step{N}-unsharded/` (ingredients share step numbers), a Hugging Face revision to
`{revision}/`. Inside the partial directory a file has its final name only once verified, and the
directory is renamed into place only when every file is. Re-running the same command after any
interruption (kill -9 included) continues from the bytes on disk; see `partfile`.
"""

from __future__ import annotations

import json
import os
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
from olmo_cli.hub.paths import checkpoint_dirs, make_parents, named_dirs, safe_path
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
    "plan_revision",
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
    hf_token: str | None = field(default=None, repr=False)
    """Sent (Authorization: Bearer) to the Hugging Face endpoint only, never to a host it redirects to."""


@dataclass(frozen=True)
class FilePlan:
    remote: RemoteFile
    on_disk: int  # bytes already downloaded (a finished file counts whole)

    def as_dict(self) -> dict[str, Any]:
        return {**self.remote.as_dict(), "on_disk": self.on_disk}


@dataclass(frozen=True)
class CheckpointPlan:
    step: int | None  # None for a Hugging Face revision that is not an intermediate checkpoint (main)
    url: str
    final: Path
    partial: Path
    files: tuple[FilePlan, ...]
    complete: bool  # already downloaded and matching the server's sizes
    ingredient: str | None = None  # OLMo 2 stage 2's ingredient
    repo: str | None = None  # a Hugging Face repository's revision: the repository and the revision
    revision: str | None = None

    @property
    def name(self) -> str:
        """The checkpoint's directory name under the destination: what tells checkpoints apart."""
        return self.final.name

    def origin(self) -> dict[str, Any]:
        """What the checkpoint is a copy of, for the manifest and --json."""
        where: dict[str, Any] = {"step": self.step, "url": self.url, "ingredient": self.ingredient}
        if self.repo is not None:
            where.update(repo=self.repo, revision=self.revision)
        return where

    @property
    def size(self) -> int:
        return sum(f.remote.size or 0 for f in self.files)

    @property
    def missing(self) -> int:
        return 0 if self.complete else sum(max((f.remote.size or 0) - f.on_disk, 0) for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.origin(),
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


def on_disk(final: Path, partial: Path, remote: Sequence[RemoteFile]) -> tuple[tuple[FilePlan, ...], bool]:
    """How much of each remote file is already downloaded (in `final` or `partial`), and whether the
    checkpoint is complete. Reads only."""
    complete = _is_complete(final, remote)
    files = []
    for f in remote:
        have = 0
        there = safe_path(final, f.name)
        if complete or ((final / MARKER).is_file() and there.is_file()):
            have = f.size if there.stat().st_size == f.size else 0
        if not have and partial.is_dir() and not partial.is_symlink():
            have = bytes_on_disk(partial, f.name, f.size, f.etag)
        files.append(FilePlan(f, have or 0))
    return tuple(files), complete


def plan_checkpoint(entry: IndexEntry, dest: Path, options: DownloadOptions) -> CheckpointPlan:
    """What the server has for one checkpoint, and how much of it is already on disk."""
    final, partial = checkpoint_dirs(dest, entry.step, entry.ingredient)
    _check_final(final)
    remote = list_checkpoint_files(
        entry.url, policy=options.policy, jobs=options.jobs, hf_endpoint=options.hf_endpoint
    )
    files, complete = on_disk(final, partial, remote)
    return CheckpointPlan(entry.step, entry.url, final, partial, files, complete, entry.ingredient)


def plan_revision(repo: str, revision: str, dest: Path, options: DownloadOptions) -> CheckpointPlan:
    """What a Hugging Face repository holds at `revision` (its tree API), for `dest/{revision}/`, and how
    much of it is already on disk."""
    from olmo_cli.hub.hf import list_repo_files, parse_revision, revision_dir_name

    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"--dest {dest} is a file", hint="give a directory")
    final, partial = named_dirs(dest, revision_dir_name(revision))
    _check_final(final)
    remote = list_repo_files(
        repo, revision, endpoint=options.hf_endpoint, token=options.hf_token, policy=options.policy
    )
    files, complete = on_disk(final, partial, remote)
    parsed = parse_revision(revision)
    url = f"hf://{repo}@{revision}/"
    return CheckpointPlan(
        parsed.step, url, final, partial, files, complete, parsed.ingredient, repo=repo, revision=revision
    )


def plan_download(
    entries: Sequence[IndexEntry], dest: Path, options: DownloadOptions
) -> list[CheckpointPlan]:
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"--dest {dest} is a file", hint="give a directory")
    unique = {(e.ingredient, e.step): e for e in entries}  # one directory per checkpoint
    return [plan_checkpoint(e, dest, options) for e in unique.values()]


# ---------------------------------------------------------------------------------------------------
# running


def _prepare_partial(plan: CheckpointPlan) -> None:
    """Create the partial directory; take over the files of an earlier, now outdated, download."""
    plan.partial.parent.mkdir(parents=True, exist_ok=True)
    plan.partial.mkdir(exist_ok=True)
    if plan.final.is_dir() and (plan.final / MARKER).is_file():  # ours, but the server's files changed
        for child in _files_under(plan.final):
            relative = child.relative_to(plan.final).as_posix()
            target = plan.partial / relative
            if relative != MARKER and not target.exists() and not target.is_symlink():
                make_parents(plan.partial, relative)
                child.replace(safe_path(plan.partial, relative))
        shutil.rmtree(plan.final)
    elif plan.final.is_dir():
        plan.final.rmdir()  # empty (_check_final refused anything else)


def _files_under(root: Path) -> list[Path]:
    """The regular files under `root`, at any depth, without following links."""
    found = []
    for top, _, names in os.walk(root):
        found += [Path(top, n) for n in names if Path(top, n).is_file() and not Path(top, n).is_symlink()]
    return found


def _open_jobs(plan: CheckpointPlan, options: DownloadOptions) -> list[Job]:
    jobs = []
    for f in plan.files:
        remote = f.remote
        done = safe_path(plan.partial, remote.name)
        if done.is_file():
            if done.stat().st_size == remote.size:
                continue  # verified and renamed by an earlier run
            done.unlink()
        part = PartFile(plan.partial, remote.name)
        # Without byte ranges a file is one stream from its first byte, and cannot be resumed.
        chunk = options.chunk_size if remote.ranges or remote.store else 1 << 62
        on_disk = part.open(remote.url, remote.size, remote.etag, chunk)
        assert part.layout is not None
        jobs.append(Job((plan.name, remote.name), remote, part, on_disk, [0] * part.layout.chunks))
    return jobs


def _finish_checkpoint(plan: CheckpointPlan, jobs: Sequence[Job]) -> None:
    verified = {job.remote.name: job.verified_by for job in jobs}
    manifest = {
        **plan.origin(),
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [
            {**f.remote.as_dict(), "verified_by": verified.get(f.remote.name, "an earlier run")}
            for f in plan.files
        ],
    }
    for leftover in _files_under(plan.partial):  # parts of files the server no longer has
        if leftover.name.startswith(".") and ".part" in leftover.name:
            leftover.unlink()
    atomic_write_text(plan.partial / MARKER, json.dumps(manifest, indent=2) + "\n")
    fsync_dir(plan.partial)
    plan.partial.replace(plan.final)
    fsync_dir(plan.final.parent)


class _Run:
    """The state of one pass of a `download` call, shared by the worker threads and the calling thread."""

    def __init__(
        self, options: DownloadOptions, emit: Callable[[DownloadEvent], None], finished: set[str]
    ) -> None:
        self.options = options
        self.emit = emit
        self.cancel = threading.Event()
        self.inbox: queue.SimpleQueue[DownloadEvent] = queue.SimpleQueue()
        self.fetcher = Fetcher(options.policy, self.cancel, self.inbox.put)
        self.jobs_by_name: dict[str, list[Job]] = {}
        self.finished = finished  # checkpoints (by name) renamed into place, by this pass or an earlier one

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
    run: _Run, plans: Sequence[CheckpointPlan], jobs_by_name: dict[str, list[Job]], finished: set[str]
) -> None:
    """Give every checkpoint whose files are all verified its final name (once)."""
    for plan in plans:
        jobs = jobs_by_name[plan.name]
        if plan.name not in finished and all(j.verified_by is not None for j in jobs):
            _finish_checkpoint(plan, jobs)
            finished.add(plan.name)
            run.emit(CheckpointDone(plan.step, str(plan.final)))


def _run_pool(run: _Run, plans: Sequence[CheckpointPlan], jobs_by_name: dict[str, list[Job]]) -> None:
    all_jobs = [j for js in jobs_by_name.values() for j in js]
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
                _finish_ready(run, plans, jobs_by_name, finished)
        if error is None:  # checkpoints with nothing left to fetch (stopped just before the rename)
            _finish_ready(run, plans, jobs_by_name, finished)
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
        if plan.complete or plan.name in run.finished:
            continue
        jobs = run.jobs_by_name.get(plan.name)
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
    partial = ", ".join(str(p.partial) for p in plans if p.name not in run.finished and not p.complete)
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
        if plan.name in run.finished:
            continue
        if plan.complete:
            run.finished.add(plan.name)
            run.emit(CheckpointDone(plan.step, str(plan.final)))
            continue
        try:
            _prepare_partial(plan)
            jobs = _open_jobs(plan, run.options)
        except OSError as exc:
            raise local_write_error(exc, plan.partial) from exc
        run.jobs_by_name[plan.name] = jobs
        for job in jobs:
            run.emit(FileStarted(job.key, job.remote.size, job.on_disk))
    todo = [p for p in plans if p.name in run.jobs_by_name]
    if todo:
        try:
            _run_pool(run, todo, run.jobs_by_name)
        except OSError as exc:  # writing the manifest or renaming the directory
            raise local_write_error(exc, todo[0].partial) from exc


def _discard_part(plans: Sequence[CheckpointPlan], mismatch: PlanMismatch) -> list[tuple[str, str]]:
    """Delete the part of the file that disagreed with its plan: its bytes are of no known version."""
    keys = []
    for plan in plans:
        for f in plan.files:
            if f.remote.url == mismatch.url:
                PartFile(plan.partial, f.remote.name).discard()
                keys.append((plan.name, f.remote.name))
    return keys


def _replan(
    plans: Sequence[CheckpointPlan], run: _Run, mismatch: PlanMismatch, options: DownloadOptions
) -> list[CheckpointPlan]:
    """Ask the server again about every checkpoint not yet in place; drop the part that disagreed."""
    for key in _discard_part(plans, mismatch):
        run.emit(Retrying(key, mismatch.url, 1, mismatch.message, 0.0))
    return [p if p.name in run.finished else _plan_again(p, options) for p in plans]


def _plan_again(plan: CheckpointPlan, options: DownloadOptions) -> CheckpointPlan:
    dest = plan.final.parent
    if plan.repo is not None and plan.revision is not None:
        return plan_revision(plan.repo, plan.revision, dest, options)
    assert plan.step is not None
    return plan_checkpoint(IndexEntry(plan.step, plan.url, 0, plan.ingredient), dest, options)


def download(
    plans: Sequence[CheckpointPlan],
    options: DownloadOptions | None = None,
    on_event: Callable[[DownloadEvent], None] | None = None,
) -> list[CheckpointPlan]:
    """Fetch what `plans` lack. Events go to `on_event` on this thread. Returns the plans done: `plans`,
    or new ones where the server's answers disagreed with them and it was asked again (once)."""
    options = options or DownloadOptions()
    emit = on_event or (lambda event: None)
    finished: set[str] = set()
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
