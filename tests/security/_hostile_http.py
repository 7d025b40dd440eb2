"""A threaded HTTP/1.1 server on 127.0.0.1 whose answers each test chooses, to play a hostile server.

By default it serves `files` honestly (HEAD, GET, byte ranges, a strong ETag, If-Range). A test replaces
the answer for one path with `behave[path] = function(request)`; the function can lie about sizes,
redirect anywhere, trickle, fall silent, or fall back to `request.honest()`. Every request is logged
with its headers, so a test can count how many requests a failure took.
"""

from __future__ import annotations

import hashlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Hostile:
    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # bumped by `replace`: a new ETag
    behave: dict[str, Callable[[Request], None]] = field(default_factory=dict)
    log: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def etag(self, path: str) -> str:
        digest = hashlib.sha1(f"{path}:{self.versions.get(path, 0)}".encode()).hexdigest()[:16]
        return f'"{digest}"'

    def replace(self, path: str, data: bytes) -> None:
        """A new version of the file: new bytes, new ETag."""
        with self.lock:
            self.files[path] = data
            self.versions[path] = self.versions.get(path, 0) + 1

    def seen(self, path: str, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.log if s.path == path and (method is None or s.method == method)]


class Request:
    """One request, and the ways a behaviour can answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: Hostile) -> None:
        self.handler, self.server = handler, server
        self.method = handler.command
        self.path = handler.path.lstrip("/")
        self.headers = dict(handler.headers.items())

    @property
    def head(self) -> bool:
        return self.method == "HEAD"

    def send_headers(self, status: int, headers: dict[str, str]) -> None:
        self.handler.send_response(status)
        for name, value in headers.items():
            self.handler.send_header(name, value)
        self.handler.end_headers()
        self.handler.wfile.flush()

    def send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Headers as given (a test may lie in them), then the body unless this is a HEAD."""
        self.send_headers(status, headers)
        if not self.head and body:
            self.write(body)

    def write(self, data: bytes) -> bool:
        """False once the client has gone away."""
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
            return True
        except OSError:
            return False

    def close(self, reset: bool = False) -> None:
        """End the connection after this answer; `reset`: with an RST, as a crashed server would."""
        if reset:
            self.handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.handler.close_connection = True

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, {"Location": location, "Content-Length": "0"})

    def status(self, code: int) -> None:
        self.send(code, {"Content-Length": "0"})

    def plan(self) -> tuple[int, int, int, dict[str, str]]:
        """What an honest server would answer: (status, start, end, headers)."""
        data = self.server.files[self.path]
        etag = self.server.etag(self.path)
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED, "Accept-Ranges": "bytes"}
        start, end, status = 0, len(data), 200
        match = _RANGE.match(self.headers.get("Range", ""))
        if match and self.headers.get("If-Range", etag) == etag:
            start = int(match[1])
            end = min(int(match[2]) + 1 if match[2] else len(data), len(data))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        headers["Content-Length"] = str(end - start)
        return status, start, end, headers

    def honest(self) -> None:
        if self.path not in self.server.files:
            return self.status(404)
        status, start, end, headers = self.plan()
        self.send(status, headers, self.server.files[self.path][start:end])

    def trickle(self, every_s: float, limit_s: float = 60.0) -> None:
        """Honest headers, then the body one byte every `every_s` seconds, until the client leaves."""
        status, start, end, headers = self.plan()
        self.send_headers(status, headers)
        data = self.server.files[self.path][start:end]
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


def _handler(server: Hostile) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self) -> None:
            request = Request(self, server)
            with server.lock:
                server.log.append(Seen(request.method, request.path, request.headers))
            behaviour = server.behave.get(request.path)
            try:
                behaviour(request) if behaviour else request.honest()
            except OSError:  # the client went away
                self.close_connection = True

        do_GET = do_HEAD = _answer  # noqa: N815

    return Handler


@contextmanager
def hostile_server() -> Iterator[Hostile]:
    state = Hostile()
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
