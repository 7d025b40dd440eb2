"""Which files a checkpoint directory holds, when the server has no way to list a directory.

An HTTP server (and the published bucket) can only be asked about names it is given, so we ask (HEAD)
for upstream's names: config.yaml, model.safetensors, optim.safetensors, train.pt, and the `.pt`
fallbacks model.pt / optim.pt only where the `.safetensors` file is absent (the loader prefers the
`.safetensors` file, so the other would never be read). What exists is what gets downloaded.

`s3://`, `gs://` and `r2://` directories are asked through cached-path's clients; `hf://ORG/REPO[@REV]/`
directories through the Hub's HTTPS `resolve` URLs, so they get ranged, resumable, verified downloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from olmo_cli.errors import NetworkError, UsageError
from olmo_cli.hub.checksum import Checksum, checksum_from_headers
from olmo_cli.hub.http import RetryPolicy, as_network_error, check_status, is_transient_error, request

__all__ = ["PRIMARY", "FALLBACKS", "RemoteFile", "hf_to_https", "list_checkpoint_files", "probe"]

PRIMARY = ("config.yaml", "model.safetensors", "optim.safetensors", "train.pt")
FALLBACKS = {"model.safetensors": "model.pt", "optim.safetensors": "optim.pt"}
STORE_SCHEMES = ("s3", "gs", "r2")


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    size: int | None
    etag: str | None = None
    """A strong ETag, sent as If-Range so a resumed download notices a file that changed."""
    checksum: Checksum | None = None
    ranges: bool = False
    """Whether the server answers byte-range requests (needed for chunks and resuming)."""
    last_modified: str | None = None
    """The version, where the server gives no strong ETag: compared with each answer, sent as If-Range."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Sent with every request for the file (a Hugging Face token); never shown or written down."""

    @property
    def store(self) -> bool:
        return urlsplit(self.url).scheme in STORE_SCHEMES

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "size": self.size,
            "checksum": self.checksum.as_dict() if self.checksum else None,
        }


def hf_to_https(url: str, endpoint: str) -> str:
    """hf://ORG/REPO[@REVISION]/PATH -> ENDPOINT/ORG/REPO/resolve/REVISION/PATH."""
    parts = url[len("hf://") :].split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise UsageError(f"{url} is not an hf://ORG/REPO[@REVISION]/PATH address")
    org, repo = parts[0], parts[1]
    repo, _, revision = repo.partition("@")
    rest = parts[2] if len(parts) > 2 else ""
    return f"{endpoint.rstrip('/')}/{org}/{repo}/resolve/{revision or 'main'}/{rest}"


def _with_retries(call: Callable[[], Any], url: str, policy: RetryPolicy) -> Any:
    failures = 0
    give_up = time.monotonic() + policy.deadline_grace_s
    while True:
        try:
            return call()
        except NetworkError:
            raise
        except Exception as exc:
            if not is_transient_error(exc):
                raise as_network_error(exc, url) from exc
            failures += 1
            delay = policy.delay(failures)
            if failures >= policy.attempts or time.monotonic() + delay > give_up:
                raise NetworkError(
                    f"{url}: no answer after {failures} tries ({exc})",
                    hint="check the network, then run the same command again",
                ) from exc
            time.sleep(delay)


def _probe_http(name: str, url: str, policy: RetryPolicy) -> RemoteFile | None:
    def head() -> Any:
        with request("HEAD", url, timeout=policy.timeout) as response:
            if response.status_code == 404:
                return None
            check_status(response, url)
            if response.status_code != 200:
                raise NetworkError(f"{url}: unexpected answer HTTP {response.status_code} {response.reason}")
            return response

    response = _with_retries(head, url, policy)
    if response is None:
        return None
    headers = response.headers
    length = headers.get("Content-Length", "").strip()
    first = response.history[0].headers if response.history else {}
    etag = headers.get("ETag")
    return RemoteFile(
        name=name,
        url=url,
        size=int(length) if length.isdigit() and len(length) < 19 else None,
        etag=etag if etag and not etag.startswith("W/") else None,
        checksum=checksum_from_headers(headers, first),
        ranges=headers.get("Accept-Ranges", "").lower() == "bytes",
        last_modified=headers.get("Last-Modified") or None,
    )


def _probe_store(name: str, url: str, policy: RetryPolicy) -> RemoteFile | None:
    from cached_path.schemes import get_scheme_client

    def size() -> tuple[int | None, str | None] | None:
        client = get_scheme_client(url)
        try:
            return client.get_size(), client.get_etag()
        except FileNotFoundError:
            return None

    try:
        found = _with_retries(size, url, policy)
    except NetworkError:
        raise
    except Exception as exc:  # noqa: BLE001 - boto/google raise their own types (credentials, ...)
        raise NetworkError(
            f"cannot read {url}: {type(exc).__name__}: {exc}",
            hint="check the address and your credentials for that storage",
        ) from exc
    if found is None:
        return None
    return RemoteFile(name, url, found[0], etag=found[1], ranges=True)


def probe(name: str, url: str, policy: RetryPolicy) -> RemoteFile | None:
    """What the server says about one file; None if it does not exist (404)."""
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return _probe_http(name, url, policy)
    if scheme in STORE_SCHEMES:
        return _probe_store(name, url, policy)
    raise UsageError(
        f"cannot download from {url}: unsupported address",
        hint="checkpoint directories must be http(s)://, s3://, gs://, r2:// or hf:// URLs",
    )


def list_checkpoint_files(
    directory_url: str, *, policy: RetryPolicy, jobs: int = 8, hf_endpoint: str = "https://huggingface.co"
) -> list[RemoteFile]:
    """The upstream files present in a checkpoint directory (see the module docstring)."""
    base = directory_url if directory_url.endswith("/") else directory_url + "/"
    if base.startswith("hf://"):
        base = hf_to_https(base, hf_endpoint)

    def probe_many(names: list[str]) -> dict[str, RemoteFile | None]:
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(names)))) as pool:
            found = pool.map(lambda n: probe(n, base + n, policy), names)
            return dict(zip(names, found, strict=True))

    found = probe_many(list(PRIMARY))
    missing = [FALLBACKS[n] for n in PRIMARY if n in FALLBACKS and found[n] is None]
    if missing:
        found.update(probe_many(missing))
    files = [f for f in found.values() if f is not None]
    if not any(f.name.startswith("model.") for f in files):
        names = ", ".join([*PRIMARY, *FALLBACKS.values()])
        raise NetworkError(
            f"no checkpoint at {base}: none of the model files exist (asked for {names})",
            hint="the index may point at a moved or deleted checkpoint; check the URL, or pick another "
            "step (`olmo checkpoints list`)",
        )
    return files
