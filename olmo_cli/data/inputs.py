"""Input files for `olmo data tokenize`: expanding arguments to files, and reading them as chunks of records.

A record is one document's raw bytes: a line of a JSON Lines file, a line of a `.txt` file with
`txt_per_line`, or a whole `.txt` file. Chunks group consecutive records of one file (about a MiB) so
worker processes get work in big enough pieces; a chunk's position is (input index, first line), lines
counted from 1, which is also how documents are named and how an interrupted run finds where to go on.

A record longer than `MAX_RECORD_BYTES` is not read into memory: it is read past in pieces and reported
as a bad record (`file:line`, or skipped and counted with --skip-bad), so one huge line (a file with no
line breaks, a binary file named .jsonl) cannot exhaust memory. Damaged compressed inputs are a
DataError naming the file (see `olmo_cli.data.compressed`).
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from olmo_cli.data.compressed import decode_errors, open_decompressed
from olmo_cli.data.tokenizer import REMOTE_SCHEMES, fetch
from olmo_cli.errors import DataError, UsageError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt",)
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
CHUNK_BYTES = 1 << 20
# One document's bytes at most: the tokenizer needs tens of bytes of memory per token it returns, so a
# 64 MiB document already takes a few GiB while it is encoded (and each worker may hold two chunks).
MAX_RECORD_BYTES = 64 << 20
_SKIP_PIECE = 1 << 20


@dataclass(frozen=True)
class TooLong:
    """Stands for a record longer than MAX_RECORD_BYTES, which was read past, not kept."""

    size: int


def too_long_message(size: int) -> str:
    return f"the record is {size:,} bytes, over the limit of {MAX_RECORD_BYTES:,} bytes for one document"


@dataclass(frozen=True)
class InputFile:
    name: str  # as the user gave it (or as a glob/directory expanded it); names documents without an id
    local: Path  # the file to read (for remote inputs: the cached download)
    kind: str  # "jsonl" or "txt"
    compression: str | None  # None, "gzip" or "zstd"


@dataclass(frozen=True)
class Chunk:
    input_index: int
    first_line: int
    records: list[bytes]
    end_offset: int  # how far into the stored (possibly compressed) file this chunk ends, for progress
    too_long: dict[int, int] = field(default_factory=dict)  # line -> size, for records kept out (b"")


def classify(name: str) -> tuple[str, str | None] | None:
    """(kind, compression) from a file name, or None when the name says it is neither JSONL nor text."""
    lower = name.lower()
    compression = None
    for suffix, method in COMPRESSIONS.items():
        if lower.endswith(suffix):
            compression, lower = method, lower[: -len(suffix)]
            break
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    if lower.endswith(TEXT_SUFFIXES):
        return "txt", compression
    return None


def expand_inputs(specs: list[str]) -> list[InputFile]:
    """Files, directories (searched recursively), globs and remote paths -> input files, in a fixed order:
    the arguments' order, and within a directory or glob, sorted by path."""
    if not specs:
        raise UsageError(
            "no inputs given", hint="e.g. olmo data tokenize docs/*.jsonl.gz --tokenizer ... -o out"
        )
    files: list[InputFile] = []
    for spec in specs:
        if spec.startswith(REMOTE_SCHEMES):
            files.append(_input_file(spec, fetch(spec)))
            continue
        if glob.has_magic(spec):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"no files match {spec}")
            files += [_input_file(m, Path(m)) for m in matches]
        elif Path(spec).is_dir():
            found = sorted(p for p in Path(spec).rglob("*") if p.is_file() and not p.name.startswith("."))
            usable = [p for p in found if classify(p.name)]
            if not usable:
                raise DataError(f"directory {spec} holds no .jsonl, .json or .txt files (plain, .gz or .zst)")
            files += [_input_file(str(p), p) for p in usable]
        elif Path(spec).is_file():
            files.append(_input_file(spec, Path(spec)))
        else:
            raise DataError(f"input {spec} does not exist")
    return files


def _input_file(name: str, local: Path) -> InputFile:
    kind = classify(name) or classify(local.name)
    if kind is None:
        raise DataError(
            f"cannot tell the format of {name}",
            hint="inputs are JSON Lines (.jsonl/.json) or text (.txt), optionally .gz or .zst compressed",
        )
    return InputFile(name=name, local=local, kind=kind[0], compression=kind[1])


def describe(file: InputFile) -> dict[str, object]:
    """The manifest's record of an input: its name, stored size and checksum."""
    digest = hashlib.sha256()
    size = 0
    with open(file.local, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            size += len(block)
    return {"path": file.name, "bytes": size, "sha256": digest.hexdigest()}


def iter_records(file: InputFile, txt_per_line: bool) -> Iterator[tuple[int, bytes | TooLong, int]]:
    """(line number, record bytes or TooLong, offset in the stored file) for every record of one input."""
    errors = decode_errors()
    with open(file.local, "rb") as raw:
        stream = open_decompressed(raw, file.compression, file.name)
        try:
            if file.kind == "txt" and not txt_per_line:
                whole = stream.read(MAX_RECORD_BYTES + 1)
                yield 1, (_too_long(stream, whole) if len(whole) > MAX_RECORD_BYTES else whole), raw.tell()
                return
            number = 0
            while line := stream.readline(MAX_RECORD_BYTES + 1):
                number += 1
                long = len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n")
                yield number, (_too_long(stream, line) if long else line), raw.tell()
        except errors as exc:  # truncated or corrupt compressed data, or a failing disk
            hint = "the file may be damaged or truncated: fetch or compress it again"
            raise DataError(f"{file.name}: cannot read: {exc}", hint=hint) from exc


def _too_long(stream: BinaryIO, start: bytes) -> TooLong:
    """Read past the rest of an over-long line (or file) in pieces; how long it was."""
    size = len(start)
    while piece := stream.readline(_SKIP_PIECE):
        size += len(piece)
        if piece.endswith(b"\n"):
            break
    return TooLong(size)


def iter_chunks(
    files: list[InputFile],
    *,
    txt_per_line: bool,
    start: tuple[int, int] = (0, 1),
    chunk_bytes: int | None = None,
) -> Iterator[Chunk]:
    """Chunks of consecutive records, beginning at `start` (input index, line): records before it are
    read past without being returned, which is how a resumed run skips what is already written."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    for index in range(start[0], len(files)):
        first_wanted = start[1] if index == start[0] else 1
        records: list[bytes] = []
        too_long: dict[int, int] = {}
        size = first = 0
        offset = 0
        for number, record, offset in iter_records(files[index], txt_per_line):
            if number < first_wanted:
                continue
            if not records:
                first = number
            if isinstance(record, TooLong):
                too_long[number], record = record.size, b""
            records.append(record)
            size += len(record)
            if size >= chunk_bytes:
                yield Chunk(index, first, records, offset, too_long)
                records, size, too_long = [], 0, {}
        if records:
            yield Chunk(index, first, records, offset, too_long)
