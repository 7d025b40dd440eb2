"""What a download reports while it runs. Plain data: the CLI renders it, tests record it.

Events are delivered on the thread that called `download`, never from worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckpointDone", "DownloadEvent", "FileDone", "FileStarted", "Progress", "Retrying"]

FileKey = tuple[str, str]  # (checkpoint directory name, file name), e.g. ("step1000-unsharded", "train.pt")


@dataclass(frozen=True)
class FileStarted:
    key: FileKey
    size: int | None
    on_disk: int  # bytes already there from an earlier, interrupted run


@dataclass(frozen=True)
class Progress:
    done: dict[FileKey, int]  # bytes on disk now, for every file still being fetched


@dataclass(frozen=True)
class Retrying:
    key: FileKey
    url: str
    attempt: int  # the failed try's number, counted since the last try that moved bytes
    reason: str
    delay_s: float


@dataclass(frozen=True)
class FileDone:
    key: FileKey
    size: int
    fetched: int  # bytes received in this run (more than size - on_disk if some were fetched twice)
    verified_by: str  # "sha256 (x-checksum-sha256)", "size", ...


@dataclass(frozen=True)
class CheckpointDone:
    step: int | None  # None for a Hugging Face revision that is not an intermediate checkpoint
    path: str


DownloadEvent = FileStarted | Progress | Retrying | FileDone | CheckpointDone
