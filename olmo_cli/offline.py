"""Working without a network: the switches that say so, and telling "offline" apart from a failing server.

`OLMO_OFFLINE=1` keeps every olmo command off the network: what needs a download says so at once (what
is cached is still used). `HF_HUB_OFFLINE=1` (the Hugging Face libraries' own switch) does the same for
the Hub (huggingface.co, or `HF_ENDPOINT`) only.

Without a switch, a machine with no network shows as a host name that does not resolve. Retrying does
not fix that, so a request to a host that has not answered once in this process fails at the first
unresolved name, in a second instead of after the retries' half a minute. A host that has answered
before (a DNS hiccup in the middle of a long download) is retried as any other transient failure.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from olmo_cli.errors import NetworkError

__all__ = [
    "HF_DEFAULT_ENDPOINT",
    "cached_when_offline",
    "check_online",
    "is_unresolved_host",
    "note_reached",
    "offline_switch",
    "resolves",
    "unreachable",
    "was_reached",
]

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}
_reached: set[str] = set()
_lock = threading.Lock()


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _is_hub(url: str) -> bool:
    hub_hosts = {"huggingface.co", "hf.co", _host(os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT)}
    host = _host(url)
    return any(host == h or host.endswith("." + h) for h in hub_hosts if h)


def offline_switch(url: str | None = None) -> str | None:
    """The variable that keeps `url` (any address when None) off the network, or None."""
    if _on("OLMO_OFFLINE"):
        return "OLMO_OFFLINE"
    if _on("HF_HUB_OFFLINE") and (url is None or _is_hub(url)):
        return "HF_HUB_OFFLINE"
    return None


def check_online(url: str, what: str = "") -> None:
    """Raises a NetworkError at once when a switch says not to use the network for `url`."""
    switch = offline_switch(url)
    if switch is None:
        return
    raise NetworkError(
        f"{what or url} needs the network, and {switch} is set: not connecting to {_host(url) or url}",
        hint=f"unset {switch} to download it; what is already cached is used without the network",
    )


def note_reached(url: str) -> None:
    """Records that `url`'s host answered (a later unresolved name is then a hiccup worth retrying)."""
    host = _host(url)
    if host:
        with _lock:
            _reached.add(host)


def was_reached(url: str) -> bool:
    with _lock:
        return _host(url) in _reached


def is_unresolved_host(exc: BaseException | None) -> bool:
    """Whether a failure (from requests, urllib3 or the socket) is a host name that did not resolve."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror):
            return True
        if type(exc).__name__ == "NameResolutionError":  # urllib3's, without importing it here
            return True
        nested = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(exc, "reason", None)
        exc = (
            exc.__cause__
            or exc.__context__
            or (reason if isinstance(reason, BaseException) else None)
            or (nested[0] if nested else None)
        )
    return False


def unreachable(url: str, what: str = "") -> NetworkError:
    """The one message for a host that does not resolve: the machine is offline (or the name is wrong)."""
    host = _host(url) or url
    return NetworkError(
        f"{what or url}: the host name {host} does not resolve: no network, or a wrong address",
        hint="connect to the network and run it again; OLMO_OFFLINE=1 tells olmo to use only what it has "
        "cached without trying",
    )


def resolves(url: str, timeout_s: float = 5.0) -> bool:
    """Whether `url`'s host name resolves (asked once, in a thread so that a stuck resolver cannot hold
    the caller longer than `timeout_s`); True for a URL without a host."""
    host = _host(url)
    if not host or was_reached(url):
        return True
    answer: list[bool] = []

    def ask() -> None:
        try:
            socket.getaddrinfo(host, None)
            answer.append(True)
        except OSError:
            answer.append(False)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(answer) and answer[0]  # no answer in time counts as not resolving


def cached_when_offline(url: str, what: str, cache_dir: Path | None = None) -> Path | None:
    """Before a cached-path download of `url` (which would retry for half a minute without a network):
    None when the network is to be tried; when a switch is set or the host does not resolve, the copy
    cached-path cached before, or the one error saying why there is none."""
    remote = url.startswith(("http://", "https://"))
    if offline_switch(url) is None and (not remote or resolves(url)):
        return None
    from cached_path import find_latest_cached

    cached = find_latest_cached(url, cache_dir)
    if cached is not None:
        return Path(cached)
    check_online(url, what)
    raise unreachable(url, what)
