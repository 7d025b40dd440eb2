"""A real HTTP/1.1 server on 127.0.0.1 serving a checkpoint tree, with byte ranges and faults on demand.

Files are `Blob`s: bytes in memory, or generated content (`PatternBlob`) that is never held whole, so
the benchmark can serve gigabytes. Faults are queued per path and consumed one per matching request:

    drop      send `after` body bytes, then reset the connection (RST)
    truncate  send `after` body bytes of a body whose Content-Length is correct, then close cleanly
    status    answer `status` (500, 404, 403, ...) with an empty body
    slow      wait `delay` seconds before answering
    corrupt   send the body with one byte changed at `after`

Every request is logged with the body bytes actually sent, so tests can tell what was fetched twice.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
SEND_BLOCK = 256 << 10


class Blob:
    size: int

    def read(self, start: int, end: int) -> bytes | memoryview:  # [start, end)
        raise NotImplementedError


@dataclass
class BytesBlob(Blob):
    data: bytes

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def read(self, start: int, end: int) -> bytes:
        return self.data[start:end]


class PatternBlob(Blob):
    """`size` bytes of a random-looking pattern shifted by `seed`: byte p is pattern[(p + seed) % P]."""

    PERIOD = (1 << 20) + 7  # not a power of two, so chunk boundaries never line up with it

    _pattern: bytes | None = None

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        if PatternBlob._pattern is None:
            PatternBlob._pattern = random.Random(1234).randbytes(self.PERIOD) * 2
        self.pattern = PatternBlob._pattern

    def read(self, start: int, end: int) -> bytes | memoryview:
        offset = (start + self.seed) % self.PERIOD
        if end - start <= self.PERIOD:  # one slice of the doubled pattern: no copy
            return memoryview(self.pattern)[offset : offset + end - start]
        out = bytearray()
        pos = start
        while pos < end:
            offset = (pos + self.seed) % self.PERIOD
            n = min(end - pos, self.PERIOD)
            out += self.pattern[offset : offset + n]
            pos += n
        return bytes(out)


@dataclass
class Fault:
    kind: str  # drop | truncate | status | slow | corrupt
    after: int = 0
    status: int = 500
    delay: float = 0.0
    method: str = "GET"


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int
    sent: int  # body bytes written to the socket


@dataclass
class Server:
    base_url: str = ""
    files: dict[str, Blob] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    extra_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    rate: float | None = None  # bytes per second per response, to make downloads take a while
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0  # requests being answered right now

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every request in flight is answered (or its client is found gone) and logged."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.active, "requests still in flight"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add_bytes(self, path: str, data: bytes) -> None:
        self.files[path.lstrip("/")] = BytesBlob(data)

    def fault(self, path: str, *faults: Fault) -> None:
        self.faults.setdefault(path.lstrip("/"), []).extend(faults)

    def served(self, path: str | None = None, prefix: str = "") -> int:
        """Body bytes sent for GETs (of `path`, or of everything under `prefix`)."""
        with self.lock:
            return sum(
                e.sent
                for e in self.log
                if e.method == "GET" and (e.path == path if path else e.path.startswith(prefix))
            )

    def reset_log(self) -> None:
        with self.lock:
            self.log.clear()

    def _next_fault(self, path: str, method: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(path, [])
            for i, fault in enumerate(queue):
                if fault.method == method:
                    return queue.pop(i)
        return None


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _record(self, status: int, sent: int) -> None:
            with server.lock:
                server.log.append(
                    Logged(self.command, self.path.lstrip("/"), self.headers.get("Range"), status, sent)
                )

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._record(status, 0)

        def _answer(self, head: bool) -> None:
            path = self.path.lstrip("/")
            fault = server._next_fault(path, self.command)
            if fault and fault.kind == "slow":
                time.sleep(fault.delay)
                fault = None
            if fault and fault.kind == "status":
                return self._empty(fault.status)
            if path in server.redirects:  # with the path's extra headers, as Hugging Face does
                return self._empty(
                    302, {"Location": server.redirects[path], **server.extra_headers.get(path, {})}
                )
            blob = server.files.get(path)
            if blob is None:
                return self._empty(404)
            start, end, status = 0, blob.size, 200
            match = _RANGE.match(self.headers.get("Range") or "") if server.ranges else None
            if_range = self.headers.get("If-Range")
            if match and (if_range is None or if_range == _etag(path, blob)):
                start = int(match[1])
                end = min(int(match[2]) + 1 if match[2] else blob.size, blob.size)
                if start >= blob.size:
                    return self._empty(416, {"Content-Range": f"bytes */{blob.size}"})
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", _etag(path, blob))
            if server.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{blob.size}")
            for k, v in server.extra_headers.get(path, {}).items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return self._record(status, 0)
            self._body(blob, start, end, status, fault)

        def _body(self, blob: Blob, start: int, end: int, status: int, fault: Fault | None) -> None:
            limit = end - start
            if fault and fault.kind in ("drop", "truncate"):
                limit = min(fault.after, limit)
            sent, pos, began = 0, start, time.monotonic()
            try:
                while sent < limit:
                    data = blob.read(pos, pos + min(SEND_BLOCK, limit - sent))
                    if fault and fault.kind == "corrupt" and pos <= start + fault.after < pos + len(data):
                        k = start + fault.after - pos
                        data = bytes(data[:k]) + bytes([data[k] ^ 0xFF]) + bytes(data[k + 1 :])
                    self.wfile.write(data)
                    sent += len(data)
                    pos += len(data)
                    if server.rate:
                        ahead = sent / server.rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
            except OSError:  # the client went away
                pass
            self._record(status, sent)
            if fault and fault.kind == "drop":
                self.wfile.flush()
                # SO_LINGER 0: close() sends RST, as a crashed server or a broken link would
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
            elif fault and fault.kind == "truncate":
                self.close_connection = True

        def _counted(self, head: bool) -> None:
            with server.lock:
                server.active += 1
            try:
                self._answer(head)
            finally:
                with server.lock:
                    server.active -= 1

        def do_HEAD(self) -> None:  # noqa: N802
            self._counted(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._counted(head=False)

    return Handler


def _etag(path: str, blob: Blob) -> str:
    return '"' + hashlib.sha1(f"{path}:{blob.size}".encode()).hexdigest()[:16] + '-1"'


@contextmanager
def serve() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # a client that hung up is not a server error
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------------------------
# a checkpoint tree in the upstream layout


UPSTREAM_FILES = {  # name -> size in the generated test tree
    "config.yaml": 700,
    "model.safetensors": 3 * (1 << 20) + 123,
    "optim.safetensors": 5 * (1 << 20) + 4567,
    "train.pt": 20_000,
}


def add_checkpoint(
    server: Server, step: int, files: dict[str, bytes] | None = None, *, prefix: str = "ckpt"
) -> dict[str, bytes]:
    """Serve `step{step}-unsharded/` under `prefix` (random contents unless given); returns the files."""
    rng = random.Random(step)
    files = files or {name: rng.randbytes(size) for name, size in UPSTREAM_FILES.items()}
    for name, data in files.items():
        server.add_bytes(f"{prefix}/step{step}-unsharded/{name}", data)
    return files


def add_index(server: Server, steps: list[int], *, path: str = "index.csv", prefix: str = "ckpt") -> str:
    rows = [f"{s},{server.url(f'{prefix}/step{s}-unsharded/')}" for s in steps]
    server.add_bytes(path, ("Step,Checkpoint Directory\n" + "\n".join(rows)).encode())
    return server.url(path)
