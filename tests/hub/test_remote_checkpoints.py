"""Checkpoint directories on an object store (olmo_cli/hub/remote_checkpoints.py, docs/format.md §4.9)
against a local S3-compatible server: uploads verified and resumable, S3's multipart ETags, the manifest
last, and everything a store answers treated as untrusted when downloading."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from olmo_cli.errors import CheckpointError, ConfigError
from olmo_cli.hub import objstore, remote_checkpoints
from olmo_cli.hub.objstore import open_store, parse_store_url
from olmo_cli.hub.remote_checkpoints import MANIFEST, download_checkpoint, upload_checkpoint
from tests._s3_server import S3, s3, s3_server  # noqa: F401 - fixtures

FILES = {"config.yaml": b"run_name: x\n", "model.safetensors": os.urandom(3000), "train/rank0.pt": b"\0" * 10}


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr(remote_checkpoints, "RETRY_DELAY_S", 0.0)


def _checkpoint(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _upload(s3: S3, directory: Path, prefix: str = "run/step3-unsharded"):  # noqa: F811
    url = parse_store_url(s3.url(prefix))
    return upload_checkpoint(open_store(url), directory, url)


def test_upload_sends_every_file_then_the_manifest_and_verifies_them(s3, tmp_path):  # noqa: F811
    result = _upload(s3, _checkpoint(tmp_path / "step3-unsharded"))
    assert result is not None and (result.files, result.uploaded) == (3, 3)
    keys = s3.keys("run/step3-unsharded/")
    assert set(keys) == {f"run/step3-unsharded/{n}" for n in [*FILES, MANIFEST]}
    client = s3.client()
    for name, data in FILES.items():
        head = client.head_object(Bucket=s3.bucket, Key=f"run/step3-unsharded/{name}")
        assert head["ContentLength"] == len(data)
        assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # noqa: S324
        assert head["Metadata"]["sha256"] == _sha(data)
    body = client.get_object(Bucket=s3.bucket, Key=f"run/step3-unsharded/{MANIFEST}")["Body"].read()
    manifest = json.loads(body)
    assert manifest["format"] == "olmo-upload/1" and manifest["name"] == "step3-unsharded"
    assert {f["name"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        n: (len(d), _sha(d)) for n, d in FILES.items()
    }


def test_a_second_upload_sends_only_what_is_missing_or_damaged(s3, tmp_path):  # noqa: F811
    directory = _checkpoint(tmp_path / "step3-unsharded")
    _upload(s3, directory)
    again = _upload(s3, directory)
    assert again is not None and again.uploaded == 0  # complete there: nothing sent
    client = s3.client()
    client.delete_object(Bucket=s3.bucket, Key="run/step3-unsharded/config.yaml")  # an upload cut short
    client.put_object(  # the same size, other bytes, no checksum of ours
        Bucket=s3.bucket, Key="run/step3-unsharded/train/rank0.pt", Body=b"\1" * 10
    )
    resumed = _upload(s3, directory)
    assert resumed is not None and resumed.uploaded == 2
    assert client.get_object(Bucket=s3.bucket, Key="run/step3-unsharded/train/rank0.pt")["Body"].read() == (
        b"\0" * 10
    )
    assert f"run/step3-unsharded/{MANIFEST}" in s3.keys()


def test_multipart_uploads_verify_by_s3s_etag_of_the_parts(s3, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(objstore, "PART_SIZE", 5 << 20)  # S3's smallest part
    data = os.urandom((11 << 20) + 7)
    directory = _checkpoint(tmp_path / "step1-unsharded", {"model.safetensors": data})
    result = _upload(s3, directory, "run/step1-unsharded")
    assert result is not None and result.uploaded == 1
    head = s3.client().head_object(Bucket=s3.bucket, Key="run/step1-unsharded/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ETag"].strip('"') == objstore.multipart_etag(directory / "model.safetensors", 5 << 20)[0]


def test_a_failing_store_is_retried_then_reported(s3, tmp_path, monkeypatch):  # noqa: F811
    from olmo_cli.errors import NetworkError

    url = parse_store_url(s3.url("run/step3-unsharded"))
    store = open_store(url)
    real, calls = store.upload, []

    def flaky(path, key, sha256):
        calls.append(key)
        if len(calls) <= 2:
            raise NetworkError("connection reset")
        real(path, key, sha256)

    monkeypatch.setattr(store, "upload", flaky)
    said: list[str] = []
    result = upload_checkpoint(store, _checkpoint(tmp_path / "step3-unsharded"), url, report=said.append)
    assert result is not None and result.uploaded == 3
    assert len(said) == 2 and "try 1 of 3 failed (connection reset)" in said[0]

    monkeypatch.setattr(store, "upload", lambda *a: (_ for _ in ()).throw(NetworkError("down")))
    with pytest.raises(NetworkError, match="failed after 3 tries: down"):
        upload_checkpoint(
            store, _checkpoint(tmp_path / "step4-unsharded"), url.parent.child("step4-unsharded")
        )


def test_download_verifies_and_resumes_into_the_cache(s3, tmp_path):  # noqa: F811
    _upload(s3, _checkpoint(tmp_path / "step3-unsharded"))
    url = parse_store_url(s3.url("run/step3-unsharded"))
    progress: list[tuple[int, int]] = []
    got = download_checkpoint(
        open_store(url), url, tmp_path / "cache", progress=lambda *p: progress.append(p)
    )
    assert got == tmp_path / "cache" / "step3-unsharded"
    assert {n: (got / n).read_bytes() for n in FILES} == FILES
    assert not (got / MANIFEST).exists() and not (tmp_path / "cache" / "step3-unsharded.partial").exists()
    total = sum(len(d) for d in FILES.values())
    assert progress[-1] == (total, total)


def test_concurrent_downloads_of_one_checkpoint_fetch_it_once(s3, tmp_path, monkeypatch):  # noqa: F811
    # Ranks torchrun starts on one node all download the checkpoint a run resumes from.
    import threading
    import time

    _upload(s3, _checkpoint(tmp_path / "step3-unsharded"))
    url = parse_store_url(s3.url("run/step3-unsharded"))
    fetched: list[str] = []
    plain = objstore.S3Store.download

    def slow_download(self, key, path, on_bytes=None):
        fetched.append(key)
        time.sleep(0.2)  # long enough for the other downloader to arrive while this one works
        return plain(self, key, path, on_bytes)

    monkeypatch.setattr(objstore.S3Store, "download", slow_download)
    got: list[Path] = []
    threads = [
        threading.Thread(target=lambda: got.append(download_checkpoint(open_store(url), url, tmp_path / "c")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [tmp_path / "c" / "step3-unsharded"] * 2
    assert sorted(fetched) == sorted(f"run/step3-unsharded/{n}" for n in [*FILES, MANIFEST])


def test_an_incomplete_remote_checkpoint_is_not_downloaded(s3, tmp_path):  # noqa: F811
    _upload(s3, _checkpoint(tmp_path / "step3-unsharded"))
    s3.client().delete_object(Bucket=s3.bucket, Key=f"run/step3-unsharded/{MANIFEST}")
    url = parse_store_url(s3.url("run/step3-unsharded"))
    with pytest.raises(CheckpointError, match="not a complete checkpoint: it has no olmo-upload.json"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")


def _forge(s3: S3, prefix: str, entries: list[dict], objects: dict[str, bytes]) -> None:  # noqa: F811
    client = s3.client()
    for key, data in objects.items():
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=data)
    manifest = {"format": "olmo-upload/1", "name": prefix.rsplit("/", 1)[-1], "files": entries}
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{MANIFEST}", Body=json.dumps(manifest).encode())


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../x", "a/../../x", "/tmp/x", "a//b", "..\\x", "C:x", "./x", "a/ b"])
def test_a_manifest_naming_a_path_outside_the_checkpoint_is_refused(s3, tmp_path, name):  # noqa: F811
    data = b"pwned"
    _forge(s3, "evil/step1-unsharded", [{"name": name, "size": len(data), "sha256": _sha(data)}], {"m": data})
    url = parse_store_url(s3.url("evil/step1-unsharded"))
    cache = tmp_path / "home" / "cache"
    cache.mkdir(parents=True)
    before = _files_under(tmp_path)
    with pytest.raises(CheckpointError, match="not a plain path inside the checkpoint; refused"):
        download_checkpoint(open_store(url), url, cache)
    written = _files_under(tmp_path) - before
    assert all(cache in p.parents for p in written), written  # nothing outside the cache
    assert not (tmp_path / "x").exists()


def test_a_listing_with_a_key_that_climbs_out_is_refused(s3, tmp_path):  # noqa: F811
    data = b"pwned"
    _forge(s3, "evil/step1-unsharded", [], {"../../../x": data})  # S3 keys may hold `..` as text
    url = parse_store_url(s3.url("evil/step1-unsharded"))
    with pytest.raises(CheckpointError, match="the listing of .* not a plain path"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")
    assert not (tmp_path / "x").exists()


def test_sizes_the_store_does_not_hold_or_the_disk_cannot_are_refused(s3, tmp_path, monkeypatch):  # noqa: F811
    data = b"12345"
    huge = [{"name": "model.safetensors", "size": 10**15, "sha256": _sha(data)}]
    _forge(s3, "big/step1-unsharded", huge, {"model.safetensors": data})
    url = parse_store_url(s3.url("big/step1-unsharded"))
    with pytest.raises(
        CheckpointError, match="is 5 bytes, but the manifest says 1,000,000,000,000,000 bytes"
    ):
        download_checkpoint(open_store(url), url, tmp_path / "cache")

    _forge(s3, "big/step2-unsharded", [{"name": "m", "size": 5, "sha256": _sha(data)}], {"m": data})
    url = parse_store_url(s3.url("big/step2-unsharded"))
    usage = type("usage", (), {"free": 4})
    monkeypatch.setattr(remote_checkpoints.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(CheckpointError, match="not enough disk space"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")
    assert not (tmp_path / "cache" / "step2-unsharded").exists()


def test_a_manifest_too_large_or_not_json_is_refused(s3, tmp_path):  # noqa: F811
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key=f"bad/step1/{MANIFEST}", Body=b"{" * ((4 << 20) + 1))
    url = parse_store_url(s3.url("bad/step1"))
    with pytest.raises(CheckpointError, match="more than a manifest can be"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")
    client.put_object(Bucket=s3.bucket, Key=f"bad/step2/{MANIFEST}", Body=b"[1, 2")
    url = parse_store_url(s3.url("bad/step2"))
    with pytest.raises(CheckpointError, match="not a valid manifest"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")


def test_a_file_that_does_not_match_its_manifest_is_not_kept(s3, tmp_path):  # noqa: F811
    _forge(s3, "bad/step1", [{"name": "m", "size": 5, "sha256": _sha(b"other")}], {"m": b"12345"})
    url = parse_store_url(s3.url("bad/step1"))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        download_checkpoint(open_store(url), url, tmp_path / "cache")
    assert not (tmp_path / "cache" / "step1").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        *[
            (u, "is not an object store URL")
            for u in ["s3://bk/../x", "ftp://bk/x", "/local/dir", "s3://bk/a\\b"]
        ],
        *[(u, "is not a bucket name") for u in ["s3://", "s3:///x", "s3://../x", "s3://b/x", "gs://-x/y"]],
    ],
)
def test_urls_that_are_not_object_store_urls_are_config_errors(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_store_url(url)


def test_r2_needs_its_endpoint_and_then_works_like_s3(s3, tmp_path, monkeypatch):  # noqa: F811
    url = parse_store_url(f"r2://{s3.bucket}/run/step1-unsharded")
    with pytest.raises(ConfigError, match="R2_ENDPOINT_URL"):
        open_store(url)
    monkeypatch.setenv("R2_ENDPOINT_URL", s3.endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # r2:// reads its own variable, not the S3 one
    result = upload_checkpoint(open_store(url), _checkpoint(tmp_path / "step1-unsharded"), url)
    assert result is not None and result.uploaded == 3
    assert f"run/step1-unsharded/{MANIFEST}" in s3.keys()


def test_a_missing_client_names_the_extra_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_clients(name, *args, **kwargs):
        if name.split(".")[0] in ("boto3", "botocore", "google"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clients)
    with pytest.raises(ConfigError) as s3_error:
        open_store(parse_store_url("s3://bucket/run"))
    assert "boto3 is not installed" in str(s3_error.value)
    assert s3_error.value.hint == "pip install 'olmo-cli[s3]'"
    with pytest.raises(ConfigError) as gcs_error:
        open_store(parse_store_url("gs://bucket/run"))
    assert gcs_error.value.hint == "pip install 'olmo-cli[gcs]'"


def test_olmo_offline_keeps_runs_off_object_stores(s3, tmp_path, monkeypatch):  # noqa: F811
    from olmo_cli.errors import NetworkError

    monkeypatch.setenv("OLMO_OFFLINE", "1")
    url = parse_store_url(s3.url("run/step1-unsharded"))
    with pytest.raises(NetworkError, match="OLMO_OFFLINE is set: not connecting") as refused:
        open_store(url)
    assert "unset OLMO_OFFLINE" in refused.value.hint
    assert s3.keys() == {}  # nothing was sent (the check below runs without the switch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub's switch is not about object stores
    monkeypatch.delenv("OLMO_OFFLINE")
    assert upload_checkpoint(open_store(url), _checkpoint(tmp_path / "step1-unsharded"), url) is not None
