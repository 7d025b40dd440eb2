"""Token files over HTTP: a real server on 127.0.0.1 with byte ranges and injected failures."""

from __future__ import annotations

import numpy as np
import pytest
from _token_data import expected_instances, random_tokens

from olmo_cli.data import remote
from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.errors import NetworkError
from tests._http_server import serve


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)


@pytest.fixture
def served():
    rng = np.random.default_rng(1)
    arrays = {"a.npy": random_tokens(rng, 50), "b.npy": random_tokens(rng, 33)}
    with serve() as server:
        for name, tokens in arrays.items():
            server.files[name] = tokens.astype("<u2").tobytes()
        server.files["a.mask.npy"] = (rng.random(50) < 0.5).tobytes()
        server.files["b.mask.npy"] = (rng.random(33) < 0.5).tobytes()
        yield server, arrays


def test_remote_instances_equal_local_and_read_only_their_bytes(served):
    server, arrays = served
    urls = [server.url("a.npy"), server.url("b.npy"), server.url("a.npy")]
    ds = MemmapDataset(urls, 10)
    heads = [entry.path for entry in server.log if entry.method == "HEAD"]
    assert sorted(heads) == ["a.npy", "b.npy"]  # one HEAD per distinct URL
    expected = expected_instances([arrays["a.npy"], arrays["b.npy"], arrays["a.npy"]], 10)
    assert len(ds) == 5 + 3 + 5
    server.log.clear()
    item = ds[6]
    assert np.array_equal(item.input_ids, expected[6])
    assert (item.path, item.file_index, item.token_offset) == (urls[1], 1, 10)
    assert [(e.method, e.path, e.range) for e in server.log] == [("GET", "b.npy", "bytes=20-39")]
    assert server.served() == 20  # 10 uint16 tokens, nothing more
    assert all(np.array_equal(ds[i].input_ids, e) for i, e in enumerate(expected))


def test_remote_label_masks(served):
    server, _ = served
    ds = MemmapDataset(
        [server.url("a.npy"), server.url("b.npy")],
        8,
        label_mask_paths=[server.url("a.mask.npy"), server.url("b.mask.npy")],
    )
    mask = np.frombuffer(server.files["b.mask.npy"], dtype=np.bool_)
    assert ds[7].label_mask.tolist() == mask[8:16].tolist()


def test_server_errors_are_retried(served):
    server, arrays = served
    server.fail("a.npy", 500, 503)  # the HEAD fails twice, then succeeds
    ds = MemmapDataset([server.url("a.npy")], 10)
    assert len(ds) == 5
    server.fail("a.npy", 502)  # the range GET fails once
    assert np.array_equal(ds[2].input_ids, arrays["a.npy"][20:30])
    assert len(server.seen("a.npy")) == 3 + 2


def test_persistent_failures_and_missing_files_are_network_errors(served):
    server, _ = served
    missing = server.url("nope.npy")
    with pytest.raises(NetworkError, match=f"HEAD {missing} failed: HTTP 404"):
        MemmapDataset([missing], 10)
    server.fail("a.npy", *[500] * (remote.RETRIES + 1))
    with pytest.raises(NetworkError, match=f"{server.url('a.npy')} failed after 4 attempts: HTTP 500"):
        MemmapDataset([server.url("a.npy")], 10)
    ds = MemmapDataset([server.url("b.npy")], 10)
    del server.files["b.npy"]  # gone after the sizes were read
    with pytest.raises(NetworkError, match="GET .*b.npy failed: HTTP 404"):
        ds[0]


def test_connection_refused_is_a_network_error():
    with serve() as server:
        url = server.url("a.npy")
    with pytest.raises(NetworkError, match="failed after 4 attempts: ConnectionError"):
        MemmapDataset([url], 10)
