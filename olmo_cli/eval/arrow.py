"""A small reader for Arrow IPC files: the `data-*.arrow` files that `datasets.save_to_disk` writes and
that the upstream evaluation packages ship their task data in.

Only what those files use is supported: the streaming format (and the file format around it), no
compression, no dictionary encoding, and the types null, int, float, bool, (large) utf8/binary,
(large/fixed-size) list and struct. Reading them ourselves keeps `olmo eval` free of pyarrow (a
150 MB wheel) for a few megabytes of questions; anything else fails with a clear DataError.

Layout facts (Arrow columnar format spec): each message is [0xFFFFFFFF][int32 n][n bytes of
flatbuffer `Message`][body]; a record batch lists one FieldNode (length, null_count) per field
depth-first and one Buffer (offset, length) per buffer, relative to the body start.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from olmo_cli.errors import DataError

__all__ = ["read_arrow_rows"]

_CONTINUATION = 0xFFFFFFFF
_FILE_MAGIC = b"ARROW1"
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
# Type union ids (Schema.fbs) -> name, for the ones we decode.
_TYPES = {1: "null", 2: "int", 3: "float", 4: "binary", 5: "utf8", 6: "bool", 12: "list", 13: "struct",
          16: "fixed_size_list", 19: "large_binary", 20: "large_utf8", 21: "large_list"}  # fmt: skip
_FLOATS = {0: np.float16, 1: np.float32, 2: np.float64}


class _Table:
    """A flatbuffer table: a position in the buffer and its vtable of field offsets."""

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _offset(self, field: int) -> int:
        slot = 4 + 2 * field
        return struct.unpack_from("<H", self.buf, self.vtable + slot)[0] if slot < self.vtable_len else 0

    def scalar(self, field: int, fmt: str, default: Any) -> Any:
        off = self._offset(field)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + off)[0] if off else default

    def _target(self, field: int) -> int | None:
        off = self._offset(field)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, field: int) -> _Table | None:
        at = self._target(field)
        return None if at is None else _Table(self.buf, at)

    def vector(self, field: int) -> tuple[int, int]:
        """(first element position, element count); (0, 0) when absent."""
        at = self._target(field)
        return (0, 0) if at is None else (at + 4, struct.unpack_from("<I", self.buf, at)[0])

    def tables(self, field: int) -> list[_Table]:
        start, n = self.vector(field)
        out = []
        for i in range(n):
            at = start + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out

    def string(self, field: int) -> str:
        start, n = self.vector(field)
        return bytes(self.buf[start : start + n]).decode("utf-8")


class _Field:
    def __init__(self, table: _Table) -> None:
        self.name = table.string(0)
        type_id = table.scalar(2, "B", 0)
        if table.table(4) is not None:
            raise ValueError(f"column {self.name!r} is dictionary-encoded, which is not supported")
        if type_id not in _TYPES:
            raise ValueError(f"column {self.name!r} has Arrow type id {type_id}, which is not supported")
        self.kind = _TYPES[type_id]
        spec = table.table(3)
        self.dtype: Any = None
        self.list_size = 0
        if self.kind == "int" and spec is not None:
            bits, signed = spec.scalar(0, "i", 0), spec.scalar(1, "?", False)
            self.dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        elif self.kind == "float" and spec is not None:
            self.dtype = np.dtype(_FLOATS[spec.scalar(0, "h", 0)]).newbyteorder("<")
        elif self.kind == "fixed_size_list" and spec is not None:
            self.list_size = spec.scalar(0, "i", 0)
        self.children = [_Field(child) for child in table.tables(5)]


class _Batch:
    """The nodes and buffers of one record batch, consumed in schema order."""

    def __init__(self, header: _Table, body: memoryview) -> None:
        if header.table(3) is not None:
            raise ValueError("the record batch is compressed, which is not supported")
        self.length = header.scalar(0, "q", 0)
        self.body = body
        start, n = header.vector(1)
        self.nodes = iter([struct.unpack_from("<qq", header.buf, start + 16 * i) for i in range(n)])
        start, n = header.vector(2)
        self.buffers = iter([struct.unpack_from("<qq", header.buf, start + 16 * i) for i in range(n)])

    def buffer(self) -> memoryview:
        offset, length = next(self.buffers)
        return self.body[offset : offset + length]

    def validity(self, length: int, null_count: int) -> list[bool] | None:
        bitmap = self.buffer()
        if null_count == 0:
            return None
        bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")[:length]
        return bits.astype(bool).tolist()

    def column(self, field: _Field) -> list[Any]:
        length, null_count = next(self.nodes)
        if field.kind == "null":
            return [None] * length
        valid = self.validity(length, null_count)
        values = self._values(field, length)
        return values if valid is None else [v if ok else None for v, ok in zip(values, valid, strict=True)]

    def _values(self, field: _Field, length: int) -> list[Any]:
        kind = field.kind
        if kind in ("int", "float"):
            return np.frombuffer(self.buffer(), dtype=field.dtype, count=length).tolist()
        if kind == "bool":
            bits = np.unpackbits(np.frombuffer(self.buffer(), dtype=np.uint8), bitorder="little")
            return bits[:length].astype(bool).tolist()
        if kind in ("utf8", "binary", "large_utf8", "large_binary"):
            offsets = self._offsets(kind.startswith("large"), length)
            data = bytes(self.buffer())
            raw = [data[offsets[i] : offsets[i + 1]] for i in range(length)]
            return [r.decode("utf-8") for r in raw] if kind.endswith("utf8") else raw
        if kind in ("list", "large_list"):
            offsets = self._offsets(kind == "large_list", length)
            items = self.column(field.children[0])
            return [items[offsets[i] : offsets[i + 1]] for i in range(length)]
        if kind == "fixed_size_list":
            items, size = self.column(field.children[0]), field.list_size
            return [items[i * size : (i + 1) * size] for i in range(length)]
        columns = {child.name: self.column(child) for child in field.children}  # struct
        return [{name: col[i] for name, col in columns.items()} for i in range(length)]

    def _offsets(self, large: bool, length: int) -> list[int]:
        return np.frombuffer(self.buffer(), dtype="<i8" if large else "<i4", count=length + 1).tolist()


def _messages(buf: memoryview, start: int, end: int) -> Iterator[tuple[_Table, memoryview]]:
    """(Message table, body) for each encapsulated message from `start` up to the end of stream."""
    pos = start
    while pos + 4 <= end:
        size = struct.unpack_from("<I", buf, pos)[0]
        pos += 4
        if size == _CONTINUATION:  # the current format; older writers omit the marker
            size = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        if size == 0:
            return
        message = _Table(buf, pos + struct.unpack_from("<I", buf, pos)[0])
        pos += size
        body_len = message.scalar(3, "q", 0)
        yield message, buf[pos : pos + body_len]
        pos += body_len


def _read(buf: memoryview) -> list[dict[str, Any]]:
    start, end = 0, len(buf)
    if bytes(buf[:6]) == _FILE_MAGIC:  # file format: the stream sits between the magic and the footer
        footer_len = struct.unpack_from("<i", buf, end - 10)[0]
        start, end = 8, end - 10 - footer_len
    fields: list[_Field] | None = None
    rows: list[dict[str, Any]] = []
    for message, body in _messages(buf, start, end):
        kind, header = message.scalar(1, "B", 0), message.table(2)
        if header is None:
            continue
        if kind == _SCHEMA:
            fields = [_Field(t) for t in header.tables(1)]
        elif kind == _DICTIONARY_BATCH:
            raise ValueError("dictionary batches are not supported")
        elif kind == _RECORD_BATCH:
            if fields is None:
                raise ValueError("a record batch comes before the schema")
            batch = _Batch(header, body)
            columns = [(f.name, batch.column(f)) for f in fields]
            rows.extend({name: col[i] for name, col in columns} for i in range(batch.length))
    if fields is None:
        raise ValueError("no schema message found")
    return rows


def read_arrow_rows(path: Path | str) -> list[dict[str, Any]]:
    """Every row of an Arrow IPC stream (or file) as a dict of plain Python values, in order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return _read(memoryview(data))
    except (ValueError, struct.error, IndexError, StopIteration, UnicodeDecodeError) as e:
        raise DataError(
            f"{path} is not an Arrow IPC file this reader understands: {e}",
            hint="task data is read from `datasets.save_to_disk` directories; re-export the data as "
            "JSON Lines (--task-file) if it uses other Arrow features",
        ) from e
