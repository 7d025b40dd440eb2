"""`remote_save_folder`: every checkpoint the run saves is uploaded to an object store in the background
(docs/format.md §4.9), and retention deletes the remote copies of the checkpoints it deletes locally.

The checkpointer tells this callback what it saved and deleted (`saved`, `deleted`); a worker thread
uploads on the main rank, so training does not wait. At start, every complete local checkpoint is
queued as well: one whose upload was cut short (a killed run, a network failure) is completed, one
already complete there costs a listing. A checkpoint whose upload failed after its retries is a warning
at once and is tried again with the next checkpoint saved. When training ends (finished, or stopped by
a signal) the run waits for the queue to empty, saying so, and then names every checkpoint that is not
uploaded (a warning: the checkpoints are safe locally, and the next `olmo resume` uploads them).
Events are emitted on the main thread only (on the next step, or at the end), never from the worker.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from olmo_cli.errors import OlmoError
from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.events import EventSink, Message

if TYPE_CHECKING:
    from olmo_cli.hub.objstore import Store, StoreURL
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["RemoteUpload"]

REPORT_EVERY_S = 10.0  # while the run waits for its uploads at the end


@dataclass(frozen=True)
class _Job:
    action: str  # "upload" or "delete"
    name: str
    path: Path | None = None


class RemoteUpload(Callback):
    name = "remote_upload"

    def __init__(self, run_dir: Path, url: str, events: EventSink, *, attempts: int = 5) -> None:
        from olmo_cli.hub.objstore import parse_store_url

        self.run_dir = run_dir
        self.url: StoreURL = parse_store_url(url)
        self.events = events
        self.attempts = attempts
        self.failed: dict[str, str] = {}  # checkpoint name -> why its upload failed (worker thread writes)
        self.uploaded: list[str] = []  # names uploaded (or found complete there) in this run, in order
        self._store: Store | None = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._deleted: set[str] = set()
        self._queued: set[str] = set()  # checkpoints waiting in the queue to be uploaded
        self._busy = ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._active = False
        self._messages: queue.Queue[Message] = queue.Queue()  # from the worker, shown on the main thread

    # ---- what the checkpointer tells us ---------------------------------------------------------

    def saved(self, path: Path) -> None:
        if not self._active:
            return
        with self._lock:
            self._deleted.discard(path.name)
            retry = [n for n in self.failed if n != path.name and (self.run_dir / n).is_dir()]
        for name in retry:  # a failure that was transient: a later checkpoint's upload tries it again
            self._put_upload(self.run_dir / name)
        self._put_upload(path)

    def _put_upload(self, path: Path) -> None:
        with self._lock:
            if path.name in self._queued:
                return
            self._queued.add(path.name)
        self._queue.put(_Job("upload", path.name, path))

    def deleted(self, name: str) -> None:
        if not self._active:
            return
        with self._lock:
            self._deleted.add(name)
            self.failed.pop(name, None)
        self._queue.put(_Job("delete", name))

    # ---- hooks ------------------------------------------------------------------------------------

    def on_start(self, trainer: Trainer) -> None:
        if not trainer.world.is_main:
            return
        from olmo_cli.hub.objstore import open_store
        from olmo_cli.train.callbacks.checkpointer import is_checkpoint_of

        self._store = open_store(self.url)  # the client was checked before the run (train.remote)
        self._active = True
        self._thread = threading.Thread(target=self._work, name="olmo-remote-upload", daemon=True)
        self._thread.start()
        existing = [p for p in self.run_dir.iterdir() if is_checkpoint_of(self.run_dir, p.name)]
        for path in sorted(existing, key=lambda p: p.name):
            self._put_upload(path)

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._flush()

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        if not self._active:
            return
        with self._lock:
            retry = [n for n in self.failed if (self.run_dir / n).is_dir()]
        for name in retry:  # one more try for what failed, now that training no longer needs the network
            self._put_upload(self.run_dir / name)
        self._drain()
        self._flush()
        missing = {n: why for n, why in self.failed.items() if (self.run_dir / n).is_dir()}
        if missing:
            self.events(
                Message(
                    f"{len(missing)} checkpoint(s) did not upload to {self.url}: "
                    + "; ".join(f"{n} ({why})" for n, why in sorted(missing.items()))
                    + f". They are saved in {self.run_dir}; `olmo resume {self.run_dir}` uploads what is "
                    "missing when it starts (check the credentials and the endpoint first)",
                    level="warning",
                )
            )

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        if not self._active:
            return
        pending = self._queue.qsize() + (1 if self._busy else 0)
        self._stop(wait=False)
        self._flush()
        if pending or self.failed:
            self.events(
                Message(
                    f"the run failed before its uploads to {self.url} were done ({pending} pending); "
                    f"`olmo resume {self.run_dir}` completes them",
                    level="warning",
                )
            )

    # ---- the worker ---------------------------------------------------------------------------------

    def _say(self, text: str, level: str = "info") -> None:
        self._messages.put(Message(text, level=level))  # type: ignore[arg-type]

    def _flush(self) -> None:
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return
            self.events(message)

    def _left(self) -> int:
        return self._queue.qsize() + (1 if self._busy else 0)

    def _drain(self) -> None:
        """Waits for the queue to empty, saying what is left now and then."""
        last = None
        while self._thread is not None and self._thread.is_alive() and self._left():
            self._flush()
            now = time.monotonic()
            if last is None or now - last >= REPORT_EVERY_S:
                busy = f"; now: {self._busy}" if self._busy else ""
                self.events(Message(f"waiting for the uploads to {self.url} ({self._left()} left{busy})"))
                last = now
            time.sleep(0.05)
        self._stop(wait=True)

    def _stop(self, *, wait: bool) -> None:
        self._active = False
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=None if wait else 1.0)
        self._thread = None

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._busy = f"{job.action} {job.name}"
            if job.action == "upload":
                with self._lock:
                    self._queued.discard(job.name)
            try:
                if job.action == "upload":
                    self._upload(job)
                else:
                    self._delete(job.name)
            except Exception as e:  # noqa: BLE001 - reported; the checkpoint is safe locally
                why = e.message if isinstance(e, OlmoError) else f"{type(e).__name__}: {e}"
                gone = job.action == "upload" and job.path is not None and not job.path.is_dir()
                if not gone:  # an upload cut short by retention deleting the checkpoint is no failure
                    with self._lock:
                        self.failed[job.name] = why
                    self._say(f"{job.action} of {job.name} at {self.url} failed: {why}", "warning")
            finally:
                self._busy = ""

    def _upload(self, job: _Job) -> None:
        from olmo_cli.hub.remote_checkpoints import upload_checkpoint

        assert self._store is not None and job.path is not None
        with self._lock:
            if job.name in self._deleted:
                return
        started = time.perf_counter()
        result = upload_checkpoint(
            self._store,
            job.path,
            self.url.child(job.name),
            attempts=self.attempts,
            report=lambda text: self._say(text, "warning"),
            cancelled=lambda: job.name in self._deleted,
        )
        if result is None:
            return
        with self._lock:
            self.failed.pop(job.name, None)
        if job.name not in self.uploaded:
            self.uploaded.append(job.name)
        if result.uploaded:
            seconds = time.perf_counter() - started
            self._say(
                f"uploaded {job.name} to {self.url.child(job.name)} ({result.uploaded} of {result.files} "
                f"files, {result.bytes_sent / 1e6:,.1f} MB, {seconds:.1f}s)"
            )

    def _delete(self, name: str) -> None:
        from olmo_cli.hub.remote_checkpoints import delete_checkpoint

        with self._lock:
            if name not in self._deleted:
                return  # saved again since (a name re-used at the same step)
        assert self._store is not None
        delete_checkpoint(self._store, self.url.child(name))
        self._say(f"deleted {self.url.child(name)} (retention)")
