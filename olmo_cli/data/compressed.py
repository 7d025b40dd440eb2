"""Reading `.gz` and `.zst` inputs so that damage is a clear error, never silently fewer documents.

gzip checks itself: a truncated member ends in EOFError, a corrupt one in zlib.error or BadGzipFile.
zstd does not: python-zstandard's stream reader treats input that ends inside a frame as the end of the
data (a file cut in half reads as its first half), and by default stops after the first frame (files
from `pzstd` or `cat a.zst b.zst` have several). So before decompressing, `check_zstd_frames` walks the
frame structure, which costs one small read per block: every frame must be complete and the file must
end where its last frame does. Decompression then reads across frames with bounded memory (the reader
returns at most what is asked for, so a small file that expands enormously does not fill memory).
Flipped bytes inside a block are found only when the decompressor rejects them or the frame carries a
checksum (the `zstd` tool writes one by default).
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import BinaryIO

from olmo_cli.errors import DataError, UsageError

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50
_DICT_ID_BYTES = (0, 1, 2, 4)
_HINT = "the file is damaged or was cut short (an interrupted download?): fetch or compress it again"


def decode_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a compressed input is damaged (gzip's and zlib's, and zstd's if present)."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def open_decompressed(raw: BinaryIO, compression: str | None, name: str) -> BinaryIO:
    """A binary stream of `raw`'s decompressed bytes (`raw` itself when not compressed)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "zstd":
        try:
            import zstandard
        except ImportError as exc:
            raise UsageError(".zst inputs need the zstandard package", hint="pip install zstandard") from exc
        check_zstd_frames(raw, name)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type, return-value]
    return raw


def check_zstd_frames(raw: BinaryIO, name: str | Path) -> None:
    """DataError unless `raw` is a sequence of complete zstd (or skippable) frames; leaves it at 0."""
    raw.seek(0, io.SEEK_END)
    end = raw.tell()
    position = 0
    if end == 0:
        raise DataError(f"{name} is empty, not zstd-compressed data", hint=_HINT)
    while position < end:
        magic = _read_int(raw, position, 4, name)
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            position += 8 + _read_int(raw, position + 4, 4, name)
        elif magic == _ZSTD_MAGIC:
            position = _frame_end(raw, position + 4, name)
        else:
            where = f"has no zstd frame at byte {position:,}" if position else "is not zstd-compressed data"
            raise DataError(f"{name} {where}", hint=_HINT)
        if position > end:
            missing = position - end
            raise DataError(f"{name} is truncated: its last zstd frame lacks {missing:,} bytes", hint=_HINT)
    raw.seek(0)


def _frame_end(raw: BinaryIO, position: int, name: str | Path) -> int:
    """Where the frame whose header starts at `position` (after the magic) ends."""
    descriptor = _read_int(raw, position, 1, name)
    if descriptor & 0x08:
        raise DataError(f"{name}: a zstd frame header at byte {position - 4:,} is invalid", hint=_HINT)
    single_segment = bool(descriptor & 0x20)
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    position += 1 + (0 if single_segment else 1) + _DICT_ID_BYTES[descriptor & 0x03] + content_size_bytes
    while True:
        header = _read_int(raw, position, 3, name)
        kind, size = (header >> 1) & 0x03, header >> 3
        if kind == 3:
            raise DataError(f"{name}: a zstd block at byte {position:,} has an invalid type", hint=_HINT)
        position += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte, repeated `size` times
        if header & 1:
            return position + (4 if descriptor & 0x04 else 0)  # the content checksum, when present


def _read_int(raw: BinaryIO, position: int, size: int, name: str | Path) -> int:
    raw.seek(position)
    data = raw.read(size)
    if len(data) < size:
        end = raw.seek(0, io.SEEK_END)
        raise DataError(f"{name} is truncated: it ends inside a zstd frame, after {end:,} bytes", hint=_HINT)
    return int.from_bytes(data, "little")
