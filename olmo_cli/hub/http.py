"""HTTP for the hub: one session per thread, the retry policy, and which failures are worth retrying.

Connection errors, timeouts, truncated bodies, 5xx and 429 answers are transient: retried with
exponential backoff and jitter (so parallel workers that failed together do not retry together). A
404 or 403 is not going to change by retrying: it fails at once, naming the URL and what to do.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from olmo_cli import __version__
from olmo_cli.errors import NetworkError

if TYPE_CHECKING:
    import requests

__all__ = [
    "RetryPolicy",
    "Transient",
    "check_status",
    "is_transient_error",
    "session",
]

USER_AGENT = f"olmo-cli/{__version__}"
_local = threading.local()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    """Consecutive failed tries of one request before giving up; a try that moved bytes resets it."""
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    """Longest silence on an open connection before it counts as a (retried) timeout."""

    def delay(self, failures: int) -> float:
        """Seconds to wait before try `failures + 1`: doubling, capped, with "equal jitter"."""
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** max(failures - 1, 0))
        return cap / 2 + random.uniform(0, cap / 2)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


class Transient(Exception):
    """A failure worth retrying (the reason is shown with the retry)."""


def session() -> requests.Session:
    """This thread's session: connections are reused, and a session is never shared across threads."""
    current = getattr(_local, "session", None)
    if current is None:
        import requests
        from requests.adapters import HTTPAdapter

        current = requests.Session()
        current.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        current.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0))
        current.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0))
        _local.session = current
    return current


def is_transient_error(exc: BaseException) -> bool:
    """Connection-level failures from requests or urllib3 (and the socket below them)."""
    import requests
    import urllib3.exceptions

    if isinstance(exc, Transient):
        return True
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return False
    return isinstance(
        exc,
        requests.exceptions.RequestException | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError,
    )


def check_status(response: requests.Response, url: str, what: str = "download") -> None:
    """Raise Transient for answers worth retrying and NetworkError for those that are not."""
    code = response.status_code
    if code < 400:
        return
    if code >= 500 or code in (408, 429):
        raise Transient(f"HTTP {code} {response.reason}")
    if code == 404:
        raise NetworkError(
            f"{url} does not exist (HTTP 404)",
            hint=f"the checkpoint index may list a {what} the server no longer has: run `olmo checkpoints "
            "list` for the available steps, or check the URL in --index",
        )
    if code in (401, 403):
        raise NetworkError(
            f"{url}: access denied (HTTP {code})",
            hint="the file is private or the link has expired; check the URL and your credentials "
            "(for Hugging Face, set HF_TOKEN)",
        )
    raise NetworkError(f"{url}: HTTP {code} {response.reason}", hint="check the URL")
