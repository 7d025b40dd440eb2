"""The one local HTTP test server: real HTTP/1.1 on 127.0.0.1, for downloads, remote token files,
remote tokenizers and servers that misbehave.

It serves `files` (bytes, or a `Blob` such as generated content never held whole, so a benchmark can
serve gigabytes) honestly: HEAD, GET, single byte ranges (`ranges=False` turns them off), a strong ETag
that changes when a file is `replace`d, Last-Modified and If-Range. On top of that, per path:

    faults        queued `Fault`s, one consumed per matching request:
                    drop      send `after` body bytes, then reset the connection (RST)
                    truncate  send `after` body bytes of a body whose Content-Length is correct, then close
                    status    answer `status` (500, 404, 403, ...) with an empty body
                    slow      wait `delay` seconds before answering
                    corrupt   send the body with one byte changed at `after`
    redirects     answer 302 to the given location (with the path's extra headers, as Hugging Face does)
    extra_headers headers added to every answer for the path
    behave        `function(request)` that answers instead: it can lie about sizes, redirect anywhere,
                  trickle, fall silent, or fall back to `request.honest()`

Every request is logged with its headers, its status and the body bytes actually sent, so a test can
tell what was fetched twice or how many requests a failure took.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
SEND_BLOCK = 256 << 10
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"


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


@dataclass
class FileBlob(Blob):
    """A file on disk, read at each request."""

    path: Path

    @property
    def size(self) -> int:  # type: ignore[override]
        return self.path.stat().st_size

    def read(self, start: int, end: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)


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


def _blob(content: bytes | Blob) -> Blob:
    return content if isinstance(content, Blob) else BytesBlob(bytes(content))


@dataclass
class Fault:
    kind: str  # drop | truncate | status | slow | corrupt
    after: int = 0
    status: int = 500
    delay: float = 0.0
    method: str | None = "GET"  # None: any method


@dataclass
class Logged:
    method: str
    path: str  # without the leading "/"
    headers: dict[str, str]
    status: int | None = None  # None while the headers are not sent yet
    sent: int = 0  # body bytes written to the socket

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


@dataclass
class Server:
    base_url: str = ""
    files: dict[str, bytes | Blob] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # bumped by `replace`: a new ETag
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    extra_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    behave: dict[str, Callable[[Request], None]] = field(default_factory=dict)
    ranges: bool = True
    rate: float | None = None  # bytes per second per response, to make downloads take a while
    log: list[Logged] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # set when the server shuts down
    active: int = 0  # requests being answered right now

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add_bytes(self, path: str, data: bytes) -> None:
        self.files[path.lstrip("/")] = BytesBlob(data)

    def add_tree(self, directory: Path, prefix: str = "") -> None:
        """Every file under `directory`, read from disk at each request, under `prefix`."""
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                self.files[prefix + path.relative_to(directory).as_posix()] = FileBlob(path)

    def replace(self, path: str, data: bytes) -> None:
        """A new version of the file: new bytes, new ETag."""
        with self.lock:
            self.files[path] = data
            self.versions[path] = self.versions.get(path, 0) + 1

    def blob(self, path: str) -> Blob | None:
        content = self.files.get(path)
        return None if content is None else _blob(content)

    def etag(self, path: str) -> str:
        blob = self.blob(path)
        size = blob.size if blob is not None else -1
        digest = hashlib.sha1(f"{path}:{size}:{self.versions.get(path, 0)}".encode()).hexdigest()[:16]
        return f'"{digest}-1"'

    def fault(self, path: str, *faults: Fault) -> None:
        self.faults.setdefault(path.lstrip("/"), []).extend(faults)

    def fail(self, path: str, *statuses: int) -> None:
        """The next requests of `path`, whatever their method, answer these statuses, one each."""
        self.fault(path, *(Fault("status", status=s, method=None) for s in statuses))

    def seen(self, path: str, method: str | None = None) -> list[Logged]:
        with self.lock:
            return [e for e in self.log if e.path == path and (method is None or e.method == method)]

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

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every request in flight is answered (or its client is found gone) and logged."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.active, "requests still in flight"

    def _next_fault(self, path: str, method: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(path, [])
            for i, fault in enumerate(queue):
                if fault.method in (None, method):
                    return queue.pop(i)
        return None


class Request:
    """One request, and the ways a behaviour can answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: Server) -> None:
        self.handler, self.server = handler, server
        self.method = handler.command
        self.path = handler.path.lstrip("/")
        self.headers = dict(handler.headers.items())
        self.logged = Logged(self.method, self.path, dict(self.headers))

    @property
    def head(self) -> bool:
        return self.method == "HEAD"

    def send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.handler.send_response(status)
        for name, value in headers.items():
            self.handler.send_header(name, value)
        self.handler.end_headers()
        self.handler.wfile.flush()
        with self.server.lock:
            self.logged.status = status

    def send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Headers as given (a test may lie in them), then the body unless this is a HEAD."""
        self.send_headers(status, headers)
        if not self.head and body:
            self.write(body)

    def write(self, data: bytes | memoryview) -> bool:
        """False once the client has gone away. The bytes are counted before they are written: a client
        that has read them may ask `served()` before this thread runs again."""
        with self.server.lock:
            self.logged.sent += len(data)
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except OSError:
            with self.server.lock:
                self.logged.sent -= len(data)
            return False
        return True

    def close(self, reset: bool = False) -> None:
        """End the connection after this answer; `reset`: with an RST, as a crashed server would."""
        if reset:
            self.handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.handler.close_connection = True

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, {"Location": location, "Content-Length": "0"})

    def status(self, code: int, headers: dict[str, str] | None = None) -> None:
        self.send(code, {**(headers or {}), "Content-Length": "0"})

    def plan(self) -> tuple[int, int, int, dict[str, str]]:
        """What an honest server would answer: (status, start, end, headers), the body being
        bytes [start, end) of the file."""
        blob = self.server.blob(self.path)
        assert blob is not None, f"{self.path} is not served"
        etag = self.server.etag(self.path)
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
        if self.server.ranges:
            headers["Accept-Ranges"] = "bytes"
        start, end, status = 0, blob.size, 200
        match = _RANGE.match(self.headers.get("Range", "")) if self.server.ranges else None
        if match and self.headers.get("If-Range", etag) == etag:
            start = int(match[1])
            if start >= blob.size:
                return 416, 0, 0, {"Content-Range": f"bytes */{blob.size}", "Content-Length": "0"}
            end = min(int(match[2]) + 1 if match[2] else blob.size, blob.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        headers["Content-Length"] = str(end - start)
        headers.update(self.server.extra_headers.get(self.path, {}))
        return status, start, end, headers

    def honest(self) -> None:
        """The answer of a well-behaved server, with the path's queued fault, if any, applied."""
        server, path = self.server, self.path
        fault = server._next_fault(path, self.method)
        if fault and fault.kind == "slow":
            time.sleep(fault.delay)
            fault = None
        if fault and fault.kind == "status":
            return self.status(fault.status)
        if path in server.redirects:
            location = {"Location": server.redirects[path]}
            return self.status(302, {**location, **server.extra_headers.get(path, {})})
        if path not in server.files:
            return self.status(404)
        status, start, end, headers = self.plan()
        self.send_headers(status, headers)
        if not self.head and status != 416:
            self._body(start, end, fault)

    def _body(self, start: int, end: int, fault: Fault | None) -> None:
        blob = self.server.blob(self.path)
        assert blob is not None
        limit = end - start
        if fault and fault.kind in ("drop", "truncate"):
            limit = min(fault.after, limit)
        sent, pos, began = 0, start, time.monotonic()
        while sent < limit:
            data = blob.read(pos, pos + min(SEND_BLOCK, limit - sent))
            if fault and fault.kind == "corrupt" and pos <= start + fault.after < pos + len(data):
                k = start + fault.after - pos
                data = bytes(data[:k]) + bytes([data[k] ^ 0xFF]) + bytes(data[k + 1 :])
            if not self.write(data):
                return
            sent += len(data)
            pos += len(data)
            if self.server.rate:
                ahead = sent / self.server.rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        if fault and fault.kind in ("drop", "truncate"):
            self.close(reset=fault.kind == "drop")

    def trickle(self, every_s: float, limit_s: float = 60.0) -> None:
        """Honest headers, then the body one byte every `every_s` seconds, until the client leaves."""
        status, start, end, headers = self.plan()
        self.send_headers(status, headers)
        data = _blob(self.server.files[self.path]).read(start, end)
        given_up = time.monotonic() + limit_s
        for i in range(len(data)):
            if (
                self.server.stop.wait(every_s)
                or time.monotonic() > given_up
                or not self.write(data[i : i + 1])
            ):
                break
        self.close()

    def silent(self, limit_s: float = 60.0) -> None:
        """Honest headers, then nothing at all, until the server is shut down."""
        status, _, _, headers = self.plan()
        self.send_headers(status, headers)
        self.server.stop.wait(limit_s)
        self.close()


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _answer(self) -> None:
            request = Request(self, server)
            with server.lock:
                server.log.append(request.logged)
                server.active += 1
            behaviour = server.behave.get(request.path)
            try:
                behaviour(request) if behaviour else request.honest()
            except OSError:  # the client went away
                self.close_connection = True
            finally:
                with server.lock:
                    server.active -= 1

        do_GET = do_HEAD = _answer  # noqa: N815

    return Handler


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
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """The files under `directory` (as they are at start), served; yields the base URL."""
    with serve() as server:
        server.add_tree(directory)
        yield server.base_url
