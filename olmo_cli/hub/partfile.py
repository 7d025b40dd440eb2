"""A file being downloaded: its bytes, which of them are done, and what they are a copy of.

Three siblings in the checkpoint's `.partial` directory:
- `.NAME.part`: the data, written in place at each chunk's offset;
- `.NAME.part.cursors`: one little-endian uint64 per chunk, the bytes done from the chunk's start,
  rewritten (8 bytes) after every block of data is written;
- `.NAME.part.json`: the URL, size, ETag and chunk size the above belong to.

Data is written before its cursor, so after a crash (kill -9 included: both writes are in the page
cache) a cursor never claims bytes that are not there, and a re-run asks only for what is missing.
A part that does not match the server's current size or ETag is started over.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from olmo_cli.atomic import atomic_write_text, fsync_dir
from olmo_cli.hub.paths import make_parents, safe_child, safe_path

__all__ = ["Layout", "PartFile", "bytes_on_disk"]

_CURSOR = struct.Struct("<Q")
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class Layout:
    url: str
    size: int | None  # None: the server did not say; then one chunk, read to the end
    etag: str | None
    chunk_size: int

    @property
    def chunks(self) -> int:
        if self.size is None or self.size == 0:
            return 1
        return -(-self.size // self.chunk_size)

    def span(self, i: int) -> tuple[int, int | None]:
        """[start, end) of chunk i in the file; end None when the size is unknown."""
        if self.size is None:
            return 0, None
        start = i * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def matches(self, size: int | None, etag: str | None) -> bool:
        return self.size == size and (etag is None or self.etag is None or etag == self.etag)


class PartFile:
    def __init__(self, directory: Path, name: str) -> None:
        """`name`: a file name, or a relative POSIX path (a Hugging Face repository's `sub/file`); the
        part's siblings go next to the file, in its own directory."""
        self.name = name
        self.directory = directory
        self.final = safe_path(directory, name)
        parent, base = self.final.parent, self.final.name
        self.data_path = safe_child(parent, f".{base}.part")
        self.cursor_path = safe_child(parent, f".{base}.part.cursors")
        self.meta_path = safe_child(parent, f".{base}.part.json")
        self.layout: Layout | None = None
        self.cursors: list[int] = []
        self._data_fd = -1
        self._cursor_fd = -1
        self._lock = threading.Lock()
        self._pending = 0

    # -- opening -------------------------------------------------------------------------------

    def load_layout(self) -> Layout | None:
        try:
            return Layout(**json.loads(self.meta_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def read_cursors(self, layout: Layout) -> list[int] | None:
        """The cursors on disk, if they are consistent with `layout` (else None)."""
        try:
            raw = self.cursor_path.read_bytes()
            data_size = self.data_path.stat().st_size
        except OSError:
            return None
        if len(raw) != _CURSOR.size * layout.chunks:
            return None
        cursors = [_CURSOR.unpack_from(raw, _CURSOR.size * i)[0] for i in range(layout.chunks)]
        for i, done in enumerate(cursors):
            start, end = layout.span(i)
            # Data is written before its cursor, so done bytes lie within the file; a chunk not yet
            # started may lie beyond its end.
            if (end is not None and done > end - start) or (done and start + done > data_size):
                return None
        return cursors

    def open(self, url: str, size: int | None, etag: str | None, chunk_size: int) -> int:
        """Continue the part on disk if it is of the same remote file, else start over; bytes done."""
        make_parents(self.directory, self.name)
        layout = self.load_layout()
        cursors = self.read_cursors(layout) if layout and layout.matches(size, etag) else None
        if layout is None or cursors is None:
            layout = Layout(url, size, etag, chunk_size)
            self._discard()
            atomic_write_text(self.meta_path, json.dumps(asdict(layout)))
            cursors = [0] * layout.chunks
            self.cursor_path.write_bytes(b"".join(_CURSOR.pack(c) for c in cursors))
        elif layout.url != url:  # the same file (size, ETag) from a new address: keep the bytes
            layout = Layout(url, layout.size, layout.etag, layout.chunk_size)
            atomic_write_text(self.meta_path, json.dumps(asdict(layout)))
        if layout.size is None:
            cursors = [0]  # unknown size: no way to tell what is missing, so read it all again
        self.layout, self.cursors = layout, cursors
        self._data_fd = os.open(self.data_path, _OPEN_FLAGS, 0o666)
        self._cursor_fd = os.open(self.cursor_path, _OPEN_FLAGS, 0o666)
        self._pending = len(self.pending())
        return self.done()

    # -- progress ------------------------------------------------------------------------------

    def pending(self) -> list[int]:
        assert self.layout is not None
        if self.layout.size is None:  # nothing tells us it is complete: always read it (from byte 0)
            return [0]
        return [i for i, done in enumerate(self.cursors) if done < self._length(i)]

    def _length(self, i: int) -> int:
        assert self.layout is not None
        start, end = self.layout.span(i)
        return (end or start) - start

    def done(self) -> int:
        return sum(self.cursors)

    def position(self, i: int) -> tuple[int, int | None]:
        """Where chunk i continues, and where it ends (None: read to the end of the body)."""
        assert self.layout is not None
        start, end = self.layout.span(i)
        return start + self.cursors[i], end

    def write(self, i: int, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset` (the chunk's current position), then advance its cursor."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._data_fd, view, offset)
            offset += n
            view = view[n:]
        self.cursors[i] += len(data)
        os.pwrite(self._cursor_fd, _CURSOR.pack(self.cursors[i]), _CURSOR.size * i)

    def rewind(self, i: int) -> None:
        """Start chunk i over (a server that ignored the Range header sent the body from byte 0)."""
        self.cursors[i] = 0
        os.pwrite(self._cursor_fd, _CURSOR.pack(0), _CURSOR.size * i)

    def chunk_done(self) -> bool:
        """Count one chunk finished; True for the call that finished the file's last chunk."""
        with self._lock:
            self._pending -= 1
            return self._pending == 0

    # -- the end -------------------------------------------------------------------------------

    def size_on_disk(self) -> int:
        return os.fstat(self._data_fd).st_size

    def commit(self) -> None:
        """Flush the data to disk and give it its final name (the caller verified it)."""
        assert self.layout is not None
        size = self.layout.size if self.layout.size is not None else self.cursors[0]
        os.ftruncate(self._data_fd, size)  # a longer file can be left by an earlier, longer attempt
        os.fsync(self._data_fd)
        self.close()
        os.replace(self.data_path, self.final)
        self.cursor_path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        fsync_dir(self.final.parent)

    def restart(self) -> None:
        """Throw the bytes away and keep the layout (after a failed verification)."""
        assert self.layout is not None
        os.ftruncate(self._data_fd, 0)
        self.cursors = [0] * self.layout.chunks
        os.pwrite(self._cursor_fd, b"".join(_CURSOR.pack(0) for _ in self.cursors), 0)
        self._pending = self.layout.chunks

    def close(self) -> None:
        for fd in (self._data_fd, self._cursor_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._cursor_fd = -1

    def discard(self) -> None:
        """Close and delete the part (its bytes are of an unknown version of the file)."""
        self.close()
        self._discard()

    def _discard(self) -> None:
        for path in (self.data_path, self.cursor_path, self.meta_path):
            path.unlink(missing_ok=True)


def bytes_on_disk(directory: Path, name: str, size: int | None, etag: str | None) -> int:
    """Bytes of `name` already downloaded into `directory`: all of a finished file of the right size,
    the recorded progress of a matching part, else 0. Reads only; changes nothing."""
    part = PartFile(directory, name)
    if part.final.is_file():
        return part.final.stat().st_size if part.final.stat().st_size == size else 0
    layout = part.load_layout()
    if layout is None or not layout.matches(size, etag):
        return 0
    cursors = part.read_cursors(layout)
    return sum(cursors) if cursors else 0
