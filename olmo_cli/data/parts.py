"""The output directory of `olmo data tokenize`: part files, their completion records, the manifest.

Layout (a contract the datasets rely on):

    part-00000.npy           raw little-endian token ids, no header, dtype as the manifest says
    part-00000.docs.csv.gz   `start,end,id` per document: token offsets within that part file
    part-00000.mask.npy      with --chat: one bool byte per token, True where the token counts for the loss
    manifest.json            written last: what is here and how it was made

How an interrupted run stays safe and resumable: a part is written under temporary names in the hidden
`.olmo-tokenize/` directory, fsynced, renamed to its final names (token file last), and only then is its
completion record (`.olmo-tokenize/part-00000.json`: counts, and where in the inputs the next part
starts) written atomically. A re-run keeps the parts that have records and starts from the position the
last one names; files without a record are rewritten. The manifest comes last; then the hidden directory
is removed. Gzip headers carry no time or name, so equal content gives equal bytes.

Each file's sha256 is computed as it is written and recorded in the manifest (`sha256`, `docs_sha256`,
`label_mask_sha256` per entry), for `olmo data inspect --verify`. A write that fails (a full disk) drops
the unfinished part's temporary files: only finished parts, which a re-run keeps, stay on the disk.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from olmo_cli.atomic import atomic_write_text, fsync_dir
from olmo_cli.data.encode import ChunkResult
from olmo_cli.errors import UsageError

FORMAT = "olmo-tokens/1"
STATE_DIR = ".olmo-tokenize"
MANIFEST = "manifest.json"
# What a manifest's `files` entry holds (the checksums are absent in manifests of older olmo versions).
ENTRY_KEYS = (
    "path",
    "tokens",
    "documents",
    "docs",
    "label_mask",
    "sha256",
    "docs_sha256",
    "label_mask_sha256",
)


def part_stem(index: int) -> str:
    return f"part-{index:05d}"


@dataclass
class Counts:
    """Running totals over the records before some position in the inputs."""

    documents: int = 0
    tokens: int = 0
    empty: int = 0
    bad: int = 0
    invalid_utf8: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class Resume:
    records: list[dict[str, Any]] = field(default_factory=list)  # completion records of finished parts
    start: tuple[int, int] = (0, 1)  # (input index, line) where the next part begins
    counts: Counts = field(default_factory=Counts)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def load_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def job_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that says what was asked for; equal jobs make equal outputs."""
    return {key: manifest.get(key) for key in ("format", "tokenizer", "dtype", "inputs", "options")}


def prepare(root: Path, job: dict[str, Any]) -> Resume | dict[str, Any]:
    """Make `root` ready for `job`: the manifest if the job is already complete there, else what to
    resume from (nothing, for a new job). Refuses a directory holding another job's tokens."""
    root.mkdir(parents=True, exist_ok=True)
    state = root / STATE_DIR
    manifest = load_manifest(root)
    if manifest is not None:
        if job_of(manifest) != job:
            raise _other_job(root)
        shutil.rmtree(state, ignore_errors=True)  # left over when the last run stopped after its manifest
        return manifest
    job_file = state / "job.json"
    if job_file.is_file():
        if json.loads(job_file.read_text(encoding="utf-8")) != job:
            raise _other_job(root)
    elif any(root.glob("part-*")):
        raise _other_job(root)
    state.mkdir(exist_ok=True)
    for leftover in state.glob("*.tmp"):
        leftover.unlink()
    atomic_write_text(job_file, _dumps(job))
    return _resume_point(root, np.dtype(job["dtype"]).itemsize, len(job["inputs"]))


def _other_job(root: Path) -> UsageError:
    return UsageError(
        f"{root} already holds token files made from other inputs or options",
        hint="choose another --output, or delete that directory to redo it",
    )


def _resume_point(root: Path, itemsize: int, n_inputs: int) -> Resume:
    resume = Resume()
    index = 0
    while (record_path := root / STATE_DIR / f"{part_stem(index)}.json").is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        token_file = root / record["path"]
        # A record is written only after its files; still, trust the files only if they are whole.
        if not token_file.is_file() or token_file.stat().st_size != record["tokens"] * itemsize:
            break
        resume.records.append(record)
        # No `next`: that part ended the inputs, and only the manifest is missing.
        resume.start = tuple(record["next"]) if record["next"] else (n_inputs, 1)  # type: ignore[assignment]
        resume.counts = Counts(**record["counts"])
        index += 1
    return resume


class _HashingFile:
    """A file being written, with the sha256 of what went into it (gzip writes through one, too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()


class PartWriter:
    """Appends documents to part files in order, starting a new part when the next document would pass
    `max_tokens` (a longer document gets a part of its own), and commits each finished part."""

    def __init__(self, root: Path, dtype: str, max_tokens: int, chat: bool, resume: Resume) -> None:
        self.root, self.state = root, root / STATE_DIR
        self.dtype, self.max_tokens, self.chat = np.dtype(dtype), max_tokens, chat
        self.records = list(resume.records)
        self.counts = Counts(**resume.counts.as_dict())
        self._files: dict[str, Any] | None = None
        self._tmp_paths: list[Path] = []  # the open part's temporary files, removed if it fails
        self._docs_csv: Any = None
        self._part_tokens = self._part_docs = 0

    # ---- feeding ---------------------------------------------------------------------------------

    def add(self, result: ChunkResult) -> None:
        lengths, lines = result.lengths, result.lines
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        i, n = 0, len(lengths)
        while i < n:
            if self._part_tokens and self._part_tokens + lengths[i] > self.max_tokens:
                self._commit(result, int(lines[i]))
            bound = self.max_tokens - self._part_tokens + offsets[i]
            j = max(int(np.searchsorted(offsets, bound, side="right")) - 1, i + 1)
            self._write(result, offsets, i, min(j, n))
            i = min(j, n)
        self._count_skipped(result, before=None)

    def _write(self, result: ChunkResult, offsets: np.ndarray, i: int, j: int) -> None:
        files = self._files or self._open()
        lo, hi = int(offsets[i]), int(offsets[j])
        files["tokens"].write(
            np.ascontiguousarray(result.ids[lo:hi], dtype=self.dtype.newbyteorder("<")).tobytes()
        )
        if self.chat:
            assert result.mask is not None
            files["mask"].write(result.mask[lo:hi].astype(np.bool_).tobytes())
        base = self._part_tokens - lo
        self._docs_csv.writerows(
            (base + int(offsets[k]), base + int(offsets[k + 1]), result.doc_ids[k]) for k in range(i, j)
        )
        self._part_tokens += hi - lo
        self._part_docs += j - i
        self.counts.documents += j - i
        self.counts.tokens += hi - lo

    def _count_skipped(self, result: ChunkResult, before: int | None) -> Counts:
        """Counts including the chunk's skipped records before line `before` (all of them if None); with
        None the running counts are updated, else a copy is returned."""
        counts = self.counts if before is None else Counts(**self.counts.as_dict())
        for name, lines in (
            ("empty", result.empty_lines),
            ("bad", [line for line, _ in result.bad]),
            ("invalid_utf8", result.invalid_utf8_lines),
        ):
            setattr(
                counts, name, getattr(counts, name) + sum(1 for x in lines if before is None or x < before)
            )
        return counts

    # ---- one part's files --------------------------------------------------------------------------

    def _tmp(self, name: str) -> Path:
        return self.state / f"{name}.tmp"

    def _open(self) -> dict[str, Any]:
        stem = part_stem(len(self.records))
        names = {"tokens": f"{stem}.npy", "docs_raw": f"{stem}.docs.csv.gz"}
        if self.chat:
            names["mask"] = f"{stem}.mask.npy"
        files: dict[str, Any] = {}
        self._files = files  # before opening: a failed open still closes what did open
        for key, name in names.items():
            self._tmp_paths.append(self._tmp(name))
            files[key] = _HashingFile(self._tmp(name))
        raw = files["docs_raw"]
        # No file name or time in the gzip header: the same documents must give the same bytes.
        files["docs"] = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
        text = io.TextIOWrapper(files["docs"], encoding="utf-8", newline="")
        files["docs_text"] = text
        self._docs_csv = csv.writer(text, lineterminator="\n")
        self._docs_csv.writerow(("start", "end", "id"))
        self._part_tokens = self._part_docs = 0
        return files

    def _commit(self, result: ChunkResult | None, next_line: int) -> None:
        """Finish the open part: its files get their final names, then its completion record is written.
        `next_line` is where, in `result`'s input, the next part starts (None result: the inputs' end)."""
        assert self._files is not None
        files = self._files
        files["docs_text"].close()  # closes the gzip stream, leaving the raw file open to fsync
        for key in ("tokens", "mask", "docs_raw"):
            if key in files:
                files[key].flush()
                os.fsync(files[key].fileno())
                files[key].close()
        self._files = None
        stem = part_stem(len(self.records))
        names = [f"{stem}.docs.csv.gz"] + ([f"{stem}.mask.npy"] if self.chat else []) + [f"{stem}.npy"]
        for name in names:  # the token file last: its presence at full size means the part's files are whole
            os.replace(self._tmp(name), self.root / name)
        self._tmp_paths = []
        fsync_dir(self.root)
        counts = self._count_skipped(result, before=next_line) if result is not None else self.counts
        record = {
            "path": f"{stem}.npy",
            "tokens": self._part_tokens,
            "documents": self._part_docs,
            "docs": f"{stem}.docs.csv.gz",
            "label_mask": f"{stem}.mask.npy" if self.chat else None,
            "sha256": files["tokens"].sha256.hexdigest(),
            "docs_sha256": files["docs_raw"].sha256.hexdigest(),
            "label_mask_sha256": files["mask"].sha256.hexdigest() if self.chat else None,
            "next": [result.input_index, next_line] if result is not None else None,
            "counts": counts.as_dict(),
        }
        try:
            atomic_write_text(self.state / f"{stem}.json", _dumps(record))
        except BaseException:
            # Without its record the part is not a result (a re-run rewrites it): give its space back.
            for name in names:
                (self.root / name).unlink(missing_ok=True)
            raise
        self.records.append(record)

    # ---- the end ------------------------------------------------------------------------------------

    def finish(self, job: dict[str, Any]) -> dict[str, Any]:
        """Commit the last part, write the manifest, remove the bookkeeping; returns the manifest."""
        if self._files is not None:
            self._commit(None, 0)
        for stale in self.root.glob("part-*"):  # from a different earlier attempt that got further
            if int(stale.name.split(".")[0].removeprefix("part-")) >= len(self.records):
                stale.unlink()
        files = [{k: r[k] for k in ENTRY_KEYS if k in r} for r in self.records]
        c = self.counts
        manifest = {
            "format": FORMAT,
            "tokenizer": job["tokenizer"],
            "dtype": job["dtype"],
            "files": files,
            "documents": c.documents,
            "tokens": c.tokens,
            "skipped": {"empty": c.empty, "bad": c.bad},
            "invalid_utf8": c.invalid_utf8,
            "inputs": job["inputs"],
            "options": job["options"],
        }
        atomic_write_text(self.root / MANIFEST, _dumps(manifest))
        shutil.rmtree(self.state, ignore_errors=True)
        return manifest

    def close(self) -> None:
        """Drop an unfinished part (after an error): its temporary files are not results, and after a
        full disk they would keep it full."""
        if self._files is not None:
            for key in ("docs_text", "tokens", "mask", "docs_raw"):  # the gzip layers before their file
                try:
                    if key in self._files:
                        self._files[key].close()
                except (OSError, ValueError):
                    pass
            self._files = None
        for path in self._tmp_paths:
            path.unlink(missing_ok=True)
        self._tmp_paths = []

    def bytes_on_disk(self) -> int:
        """What the finished parts' files take."""
        names = [r[key] for r in self.records for key in ("path", "docs", "label_mask") if r.get(key)]
        return sum((self.root / n).stat().st_size for n in names if (self.root / n).is_file())
