"""HTTP for the hub: one session per thread, the retry policy, redirects, and which failures are worth
retrying.

Connection errors, timeouts, truncated bodies, 5xx, 408 and 429 answers are transient: retried with
exponential backoff and jitter (so parallel workers that failed together do not retry together). Other
4xx answers will not change by retrying, and neither will a redirect loop or a redirect to another
scheme: they fail at once, naming the URL and what to do.

Redirects are followed here, not by requests: a redirect's body is never read (a hostile one may never
end), a loop is noticed on its first repeat, and only same-scheme or http -> https redirects are taken.
An Authorization header is dropped at a redirect to another host.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from olmo_cli import __version__
from olmo_cli.errors import NetworkError
from olmo_cli.offline import check_online, is_unresolved_host, note_reached, unreachable, was_reached

if TYPE_CHECKING:
    import requests

__all__ = [
    "MAX_REDIRECTS",
    "RetryPolicy",
    "Transient",
    "check_redirect",
    "as_network_error",
    "check_status",
    "is_http_error",
    "is_transient_error",
    "request",
    "session",
]

USER_AGENT = f"olmo-cli/{__version__}"
MAX_REDIRECTS = 10
_local = threading.local()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    """Consecutive failed tries of one request before giving up; a try that moved at least one
    window's worth of bytes (`min_rate * rate_window_s`) resets the count."""
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 30.0
    """Longest silence on an open connection before it counts as a (retried) timeout."""
    min_rate: float = 4096.0
    """Bytes per second a try must move, measured over each `rate_window_s`; a slower try is ended
    (and retried): a server that trickles bytes cannot hold a download forever."""
    rate_window_s: float = 30.0
    deadline_s: float | None = None
    """Longest time one file may take, all tries and waits included; None: `deadline_grace_s` plus the
    time its size takes at `min_rate`."""
    deadline_grace_s: float = 120.0
    """Also the longest time a request may go on failing without progress (silence, a trickle)."""

    def delay(self, failures: int) -> float:
        """Seconds to wait before try `failures + 1`: doubling, capped, with "equal jitter"."""
        cap = min(self.max_backoff_s, self.backoff_s * 2 ** max(failures - 1, 0))
        return cap / 2 + random.uniform(0, cap / 2)

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)

    @property
    def progress_bytes(self) -> int:
        """What a try must move to count as progress (and reset the count of failed tries)."""
        return max(1, int(self.min_rate * self.rate_window_s))

    def file_deadline(self, size: int | None) -> float:
        """Seconds one file of `size` bytes may take in all."""
        if self.deadline_s is not None:
            return self.deadline_s
        return self.deadline_grace_s + (size or 0) / max(self.min_rate, 1.0)


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
        current.max_redirects = MAX_REDIRECTS
        _local.session = current
    return current


def check_redirect(source: str, target: str, original: str) -> None:
    """Refuse a redirect that changes the scheme, except the upgrade from http to https."""
    before, after = urlsplit(source).scheme.lower(), urlsplit(target).scheme.lower()
    if after == before or (before, after) == ("http", "https"):
        return
    raise NetworkError(
        f"{original}: refusing to follow a redirect from {before}:// to {target[:200]}",
        hint="only redirects to the same scheme (or from http to https) are followed; the server or a "
        "proxy sent a downgrading or non-HTTP address; check the URL in the index",
    )


def request(
    method: str,
    url: str,
    *,
    timeout: tuple[float, float],
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """`method` on `url`, streamed, following redirects (see the module docstring). The caller closes it;
    `history` holds the redirects that led to it, closed, with their headers."""
    check_online(url)
    history: list[requests.Response] = []
    seen = {url}
    current = url
    while True:
        try:
            response = session().request(
                method, current, headers=headers, stream=True, timeout=timeout, allow_redirects=False
            )
        except Exception as exc:
            if is_unresolved_host(exc) and not was_reached(current):
                raise unreachable(current) from None  # offline: retrying will not help (olmo_cli/offline.py)
            raise
        note_reached(current)
        location = response.headers.get("Location") if response.is_redirect else None
        if location is None:
            response.history = history
            return response
        response.close()  # unread: closing drops the connection instead of draining the body
        target = urljoin(current, location.strip())
        check_redirect(current, target, url)
        if headers and _origin(target) != _origin(current):
            # A token is for the host it was given to (the Hub), not for the CDN it redirects to.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if target in seen:
            raise NetworkError(
                f"{url}: the server redirects in a loop (back to {target[:200]})",
                hint="the server is misconfigured; check the URL in the index",
            )
        if len(history) >= MAX_REDIRECTS:
            raise NetworkError(
                f"{url}: more than {MAX_REDIRECTS} redirects",
                hint="the server is misconfigured; check the URL in the index",
            )
        history.append(response)
        seen.add(target)
        current = target


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def is_transient_error(exc: BaseException) -> bool:
    """Connection-level failures from requests or urllib3 (and the socket below them)."""
    import requests
    import urllib3.exceptions

    if isinstance(exc, Transient):
        return True
    permanent = (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidHeader,
        requests.exceptions.TooManyRedirects,
        requests.exceptions.URLRequired,
        requests.exceptions.InvalidJSONError,
    )
    if isinstance(exc, permanent):
        return False
    return isinstance(
        exc,
        requests.exceptions.RequestException | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError,
    )


def is_http_error(exc: BaseException) -> bool:
    """Raised by requests or urllib3 (both derive from OSError, like a full disk: tell them apart)."""
    import requests
    import urllib3.exceptions

    return isinstance(exc, requests.exceptions.RequestException | urllib3.exceptions.HTTPError)


def as_network_error(exc: BaseException, url: str) -> NetworkError:
    """A failure of requests that retrying will not fix, as the one message a user sees."""
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return NetworkError(
        f"{url}: {type(exc).__name__}: {first.splitlines()[0][:200] if first else ''}".rstrip(": "),
        hint="check the URL in the index",
    )


def check_status(response: requests.Response, url: str, what: str = "download") -> None:
    """Raise Transient for answers worth retrying and NetworkError for those that are not."""
    code = response.status_code
    if code < 300:
        return
    if code < 400:  # a redirect without a usable Location, 304 to a request that was not conditional
        raise NetworkError(
            f"{url}: unexpected answer HTTP {code} {response.reason}",
            hint="the server answered with a redirect olmo cannot follow; check the URL",
        )
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
