"""A real HTTP server on 127.0.0.1 for the data tests: HEAD, GET and single byte-range GETs of files
held in memory, with injected failures and a log of what each request asked for."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


@dataclass
class RangeServer:
    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    # path -> statuses to answer (one per request, in order) before serving normally
    failures: dict[str, list[int]] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def bytes_served(self, name: str) -> int:
        """Body bytes sent for GETs of `name` (from the logged ranges; whole-file GETs count fully)."""
        total = 0
        for method, path, rng in self.log:
            if method == "GET" and path == f"/{name}":
                match = _RANGE.match(rng or "")
                total += int(match[2]) - int(match[1]) + 1 if match else len(self.files[name])
        return total


def _handler(server: RangeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _fail_or_body(self) -> bytes | None:
            with server.lock:
                server.log.append((self.command, self.path, self.headers.get("Range")))
                pending = server.failures.get(self.path)
                status = pending.pop(0) if pending else None
            if status is not None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            body = server.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            return body

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            body = self._fail_or_body()
            if body is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{len(body)}"')
                self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            body = self._fail_or_body()
            if body is None:
                return
            match = _RANGE.match(self.headers.get("Range") or "")
            if match:
                start, end = int(match[1]), min(int(match[2]), len(body) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                body = body[start : end + 1]
            else:
                self.send_response(200)
                self.send_header("ETag", f'"{len(body)}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def range_server() -> Iterator[RangeServer]:
    state = RangeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
