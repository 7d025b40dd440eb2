"""A local S3-compatible server for the remote-checkpoint tests: moto's, in a thread on 127.0.0.1 at a
free port, with boto3 pointed at it through `AWS_ENDPOINT_URL` (the variable olmo documents for an
S3-compatible store) and dummy credentials. Nothing leaves the machine: the AWS config files are
pointed at nothing, so no profile or real credentials of the machine are read."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

_ENV_CLEARED = (
    "AWS_PROFILE",
    "S3_PROFILE",
    "R2_PROFILE",
    "R2_ENDPOINT_URL",
    "WEKA_PROFILE",
    "WEKA_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
)
_buckets = itertools.count()


@dataclass
class S3:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def keys(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every object under `prefix` in the bucket: key -> the listing's entry."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item for page in pages for item in page.get("Contents", [])}

    def url(self, path: str = "") -> str:
        return f"s3://{self.bucket}/{path}".rstrip("/")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a free port), once per session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path) -> S3:
    """A fresh bucket on the local server, and the environment that points boto3 (and olmo) at it."""
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    store = S3(s3_server, f"olmo-test-{next(_buckets)}")
    store.client().create_bucket(Bucket=store.bucket)
    return store
