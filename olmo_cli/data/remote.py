"""Reading parts of files over HTTP(S): sizes from HEAD, bytes from Range requests.

Token files and data orders are flat arrays, so an instance or a batch is one contiguous byte range:
reading it never downloads the rest. Connection errors and 5xx answers are retried a few times with a
short backoff (servers and proxies drop the odd request); anything else is a NetworkError naming the URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from olmo_cli.errors import NetworkError
from olmo_cli.offline import check_online, is_unresolved_host, note_reached, unreachable, was_reached

if TYPE_CHECKING:
    import requests

RETRIES = 3
BACKOFF_S = 0.25
TIMEOUT_S = 60.0
_local = threading.local()


def _session() -> requests.Session:
    # One session per thread: connections are reused, and sessions are not shared across threads.
    session = getattr(_local, "session", None)
    if session is None:
        import requests

        session = _local.session = requests.Session()
    return session


def _request(method: str, url: str, headers: dict[str, str] | None = None) -> requests.Response:
    """One request with the retry policy; returns a response with a status below 400."""
    import requests

    check_online(url)
    last = ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            response = _session().request(
                method, url, headers=headers, timeout=TIMEOUT_S, allow_redirects=True
            )
        except (requests.ConnectionError, requests.Timeout) as e:
            if is_unresolved_host(e) and not was_reached(url):
                raise unreachable(url) from None  # offline: retrying will not help
            last = f"{type(e).__name__}: {e}"
            continue
        note_reached(url)
        if response.status_code >= 500:
            last = f"HTTP {response.status_code}"
            continue
        if response.status_code >= 400:
            raise NetworkError(
                f"{method} {url} failed: HTTP {response.status_code} {response.reason}",
                hint="check the URL" if response.status_code == 404 else "check access to the URL",
            )
        return response
    raise NetworkError(f"{method} {url} failed after {RETRIES + 1} attempts: {last}", hint="retry later")


def remote_size(url: str) -> int:
    """The size in bytes of a remote file, from HEAD's Content-Length."""
    response = _request("HEAD", url)
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise NetworkError(f"{url} did not report its size (no Content-Length on HEAD)")
    return int(length)


def remote_sizes(urls: Sequence[str], max_workers: int = 16) -> list[int]:
    """Sizes of many remote files, fetched concurrently (one HEAD each)."""
    if len(urls) <= 1:
        return [remote_size(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(urls))) as pool:
        return list(pool.map(remote_size, urls))


def read_range(url: str, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of a remote file."""
    if length <= 0:
        return b""
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    for attempt in range(RETRIES + 1):
        response = _request("GET", url, headers)
        body = response.content
        if response.status_code == 200 and offset == 0 and len(body) == length:
            return body  # a server without Range support answered with the whole (equally long) file
        if response.status_code != 206:
            raise NetworkError(
                f"{url} does not serve byte ranges (HTTP {response.status_code} to a Range request)",
                hint="serve the file from a server that supports Range requests, or download it first",
            )
        if len(body) == length:
            return body
        if attempt < RETRIES:  # a truncated body: the connection dropped mid-transfer
            time.sleep(BACKOFF_S * 2**attempt)
    raise NetworkError(f"{url}: bytes {offset}..{offset + length} arrived short {RETRIES + 1} times")


class RemoteArray:
    """A flat little-endian array in a remote file, read by slices: `arr[a:b]` is one Range request."""

    def __init__(self, url: str, dtype: np.dtype | str, size_bytes: int | None = None):
        self.url = url
        self.dtype = np.dtype(dtype)
        self._size = size_bytes

    @property
    def size_bytes(self) -> int:
        if self._size is None:
            self._size = remote_size(self.url)
        return self._size

    def __len__(self) -> int:
        return self.size_bytes // self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("RemoteArray supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        count = max(0, stop - start)
        itemsize = self.dtype.itemsize
        return np.frombuffer(read_range(self.url, start * itemsize, count * itemsize), dtype=self.dtype)
