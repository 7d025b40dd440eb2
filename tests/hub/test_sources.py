"""Directory URLs other than plain HTTP: hf:// (through the Hub's resolve URLs, with the SHA-256 Hugging
Face puts on its redirect) and object stores (through cached-path's scheme clients)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cached_path.schemes import S3Client, SchemeClient, add_scheme_client

from olmo_cli.errors import NetworkError
from olmo_cli.hub.download import MARKER, DownloadOptions, download, plan_download
from olmo_cli.hub.events import FileDone, Retrying
from olmo_cli.hub.index import IndexEntry
from olmo_cli.hub.listing import hf_to_https
from tests._http_server import Server

from ._helpers import FAST, files_under

FILES = {
    "config.yaml": b"run_name: x\n",
    "model.safetensors": bytes(range(256)) * 9000,
    "train.pt": b"t" * 99,
}


def test_hf_addresses_become_resolve_urls() -> None:
    assert hf_to_https("hf://allenai/OLMo-1B@step20000-tokens84B/", "https://hub") == (
        "https://hub/allenai/OLMo-1B/resolve/step20000-tokens84B/"
    )
    assert hf_to_https("hf://org/repo/sub/", "https://hub/") == "https://hub/org/repo/resolve/main/sub/"


def test_an_hf_directory_downloads_and_is_verified_by_the_linked_etag(server: Server, tmp_path: Path) -> None:
    for name, data in FILES.items():
        resolve = f"allenai/OLMo-1B/resolve/step1000-tokens4B/{name}"
        server.add_bytes(f"cdn/{name}", data)
        server.redirects[resolve] = f"/cdn/{name}"
        server.extra_headers[resolve] = {"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"'}
    options = DownloadOptions(jobs=2, chunk_size=1 << 18, policy=FAST, hf_endpoint=server.base_url)
    events: list[object] = []
    entry = IndexEntry(1000, "hf://allenai/OLMo-1B@step1000-tokens4B/", 2)
    download(plan_download([entry], tmp_path, options), options, events.append)
    got = files_under(tmp_path / "step1000-unsharded")
    assert got.pop(MARKER) and got == FILES
    assert {e.verified_by for e in events if isinstance(e, FileDone)} == {"sha256 (x-linked-etag)"}


class MemoryStore(S3Client):
    """s3:// served from a dict, failing the first range read of every object once."""

    objects: dict[str, bytes] = {}
    failed: set[str] = set()

    def __init__(self, resource: str) -> None:
        SchemeClient.__init__(self, resource)

    def _data(self) -> bytes:
        if self.resource not in self.objects:
            raise FileNotFoundError(self.resource)
        return self.objects[self.resource]

    def get_size(self) -> int:
        return len(self._data())

    def get_etag(self) -> str:
        return hashlib.md5(self._data()).hexdigest()

    def get_bytes_range(self, index: int, length: int) -> bytes:
        if self.resource not in self.failed:
            self.failed.add(self.resource)
            raise ConnectionClosedError(self.resource)
        return self._data()[index : index + length]


class ConnectionClosedError(Exception):
    """Named like botocore's, which the downloader treats as transient."""


@pytest.fixture
def memory_s3() -> Iterator[type[MemoryStore]]:
    MemoryStore.objects = {f"s3://bucket/run/step7-unsharded/{n}": d for n, d in FILES.items()}
    MemoryStore.failed = set()
    add_scheme_client(MemoryStore)
    yield MemoryStore
    add_scheme_client(S3Client)


def test_an_object_store_directory_goes_through_cached_path(
    memory_s3: type[MemoryStore], tmp_path: Path
) -> None:
    options = DownloadOptions(jobs=2, chunk_size=1 << 20, policy=FAST)
    events: list[object] = []
    entry = IndexEntry(7, "s3://bucket/run/step7-unsharded/", 2)
    plans = plan_download([entry], tmp_path, options)
    assert [f.remote.size for f in plans[0].files] == [len(d) for d in FILES.values()]
    download(plans, options, events.append)
    got = files_under(tmp_path / "step7-unsharded")
    assert got.pop(MARKER) and got == FILES
    assert sum(isinstance(e, Retrying) for e in events) == len(FILES)


def test_an_empty_object_store_directory_is_an_error(memory_s3: type[MemoryStore], tmp_path: Path) -> None:
    entry = IndexEntry(8, "s3://bucket/run/step8-unsharded/", 2)
    with pytest.raises(NetworkError, match="no checkpoint at s3://bucket/run/step8-unsharded/"):
        plan_download([entry], tmp_path, DownloadOptions(policy=FAST))
