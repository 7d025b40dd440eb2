"""Object stores (S3 and S3-compatible stores such as R2, Google Cloud Storage): the few operations a run
needs to keep its checkpoints there, behind one small interface.

URLs: `s3://bucket/prefix`, `r2://bucket/prefix`, `weka://bucket/prefix` (S3 API) and `gs://bucket/prefix`.
Clients are optional extras, imported when first used: boto3 (`pip install 'olmo-cli[s3]'`) and
google-cloud-storage (`pip install 'olmo-cli[gcs]'`).

Where the S3 API is reached (docs/format.md §4.9): `s3://` uses boto3's own configuration (credentials,
`AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_S3`, `AWS_PROFILE`, or upstream's `S3_PROFILE`); `r2://` needs
`R2_ENDPOINT_URL` (and reads `R2_PROFILE`), `weka://` `WEKA_ENDPOINT_URL` (and `WEKA_PROFILE`), as
upstream's. Every call has connect and read timeouts, so nothing waits forever.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from olmo_cli.errors import ConfigError, NetworkError
from olmo_cli.offline import offline_switch

__all__ = [
    "SCHEMES",
    "ObjectInfo",
    "Store",
    "StoreURL",
    "is_store_url",
    "multipart_etag",
    "open_store",
    "parse_store_url",
]

S3_SCHEMES = ("s3", "r2", "weka")
SCHEMES = (*S3_SCHEMES, "gs")
# One fixed multipart layout, so the ETag an upload gets can be computed here and compared (verification).
PART_SIZE = 64 << 20
TIMEOUT_S = 60
# Bucket names as S3 and GCS allow them (GCS's dotted names may be longer); never a path component
# such as `..`, since a bucket's name becomes a directory of the download cache.
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,221}$")


@dataclass(frozen=True)
class StoreURL:
    scheme: str
    bucket: str
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def child(self, name: str) -> StoreURL:
        return StoreURL(self.scheme, self.bucket, self.key(name))

    @property
    def name(self) -> str:
        return self.prefix.rsplit("/", 1)[-1]

    @property
    def parent(self) -> StoreURL:
        return StoreURL(self.scheme, self.bucket, self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else "")


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the prefix listed
    size: int
    etag: str | None = None  # without quotes
    sha256: str | None = None  # what olmo stored with the object when it uploaded it


def is_store_url(text: str | os.PathLike | None) -> bool:
    return isinstance(text, str) and text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def parse_store_url(url: str, *, what: str = "remote_save_folder") -> StoreURL:
    """`scheme://bucket/prefix` -> StoreURL; anything else is a ConfigError naming the schemes."""
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    bucket, _, prefix = rest.partition("/")
    parts = [p for p in prefix.split("/") if p]
    bad_part = any(p in (".", "..") or "\\" in p or "\0" in p for p in parts)
    if not sep or scheme.lower() not in SCHEMES or bad_part:
        raise ConfigError(
            f"{what} {url!r} is not an object store URL",
            hint="use s3://BUCKET/PREFIX (also r2:// and weka:// through the S3 API) or gs://BUCKET/PREFIX",
        )
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"{what} {url!r}: {bucket!r} is not a bucket name",
            hint="a bucket name has 2 to 222 characters (letters, digits, dots, underscores, hyphens), the "
            "first a letter or digit, and no '..'",
        )
    return StoreURL(scheme.lower(), bucket, "/".join(parts))


class Store(Protocol):
    url: StoreURL
    etag_part_size: int | None  # the part size of the ETags it computes (None: the whole object's MD5)

    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def head(self, key: str) -> ObjectInfo | None: ...
    def upload(self, path: Path, key: str, sha256: str) -> None: ...
    def download(self, key: str, path: Path, on_bytes: Callable[[int], None] | None = None) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete_key(self, key: str) -> None: ...


def open_store(url: StoreURL) -> Store:
    """The client for `url`'s store; refused at once under OLMO_OFFLINE (every store is on the network)."""
    if offline_switch() == "OLMO_OFFLINE":
        raise NetworkError(
            f"{url} is on an object store, and OLMO_OFFLINE is set: not connecting to it",
            hint="unset OLMO_OFFLINE to upload or download checkpoints there (or drop remote_save_folder)",
        )
    if url.scheme == "gs":
        return GCSStore(url)
    return S3Store(url)


def _missing(client: str, extra: str, scheme: str) -> ConfigError:
    return ConfigError(
        f"{client} is not installed, and it is needed for checkpoints on {scheme}:// (remote_save_folder, "
        "or a load_path / --load-path URL)",
        hint=f"pip install 'olmo-cli[{extra}]'",
    )


def multipart_etag(path: Path, part_size: int | None = PART_SIZE) -> tuple[str, str]:
    """(ETag an S3 upload in parts of `part_size` gets, sha256) of a file: the MD5 of a file sent in one
    part (always, for `part_size` None: GCS's MD5 of the whole object), else the MD5 of the parts' MD5s
    and `-N`."""
    sha, parts, whole = hashlib.sha256(), [], hashlib.md5()  # noqa: S324 - S3's ETag, not security
    block = min(part_size or 8 << 20, 8 << 20)
    part, in_part = hashlib.md5(), 0  # noqa: S324
    with open(path, "rb") as f:
        while chunk := f.read(block if part_size is None else min(block, part_size - in_part)):
            sha.update(chunk)
            whole.update(chunk)
            if part_size is not None:
                part.update(chunk)
                in_part += len(chunk)
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.md5(), 0  # noqa: S324
    if in_part:
        parts.append(part.digest())
    if len(parts) <= 1:
        return whole.hexdigest(), sha.hexdigest()
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}", sha.hexdigest()  # noqa: S324


class S3Store:
    """S3 and S3-compatible stores through boto3 (multipart transfers are boto3's)."""

    def __init__(self, url: StoreURL) -> None:
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise _missing("boto3", "s3", url.scheme) from None
        self.url = url
        endpoint, profile = None, os.environ.get("S3_PROFILE")
        if url.scheme != "s3":
            env = url.scheme.upper()
            endpoint, profile = os.environ.get(f"{env}_ENDPOINT_URL"), os.environ.get(f"{env}_PROFILE")
            if not endpoint:
                raise ConfigError(
                    f"{url.scheme}:// needs the endpoint of the store in {env}_ENDPOINT_URL",
                    hint=f"export {env}_ENDPOINT_URL=https://… (and {env}_PROFILE for its credentials)",
                )
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        except BotoCoreError as e:  # ProfileNotFound, a malformed ~/.aws/config
            raise ConfigError(
                f"the credentials for {url.scheme}:// cannot be read: {e}",
                hint="check the profile named in S3_PROFILE / R2_PROFILE / WEKA_PROFILE (or AWS_PROFILE)",
            ) from None
        config = Config(
            connect_timeout=TIMEOUT_S,
            read_timeout=TIMEOUT_S,
            retries={"max_attempts": 3, "mode": "standard"},
        )
        self._client = session.client("s3", endpoint_url=endpoint, config=config)
        self.etag_part_size: int | None = PART_SIZE
        self._transfer = TransferConfig(multipart_threshold=PART_SIZE + 1, multipart_chunksize=PART_SIZE)
        self._errors = _boto_errors()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as e:
            raise NetworkError(f"{what} on {self.url.scheme}://{self.url.bucket} failed: {e}") from e

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix/` (keys relative to it), all pages."""
        base = prefix.rstrip("/") + "/" if prefix else ""
        out: list[ObjectInfo] = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call("listing", lambda: list(paginator.paginate(Bucket=self.url.bucket, Prefix=base)))
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                out.append(ObjectInfo(key[len(base) :], int(item["Size"]), item.get("ETag", "").strip('"')))
        return out

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            answer = self._client.head_object(Bucket=self.url.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise NetworkError(f"reading {self.url.scheme}://{self.url.bucket}/{key} failed: {e}") from e
        except self._errors as e:
            raise NetworkError(f"reading {self.url.scheme}://{self.url.bucket}/{key} failed: {e}") from e
        meta = answer.get("Metadata") or {}
        etag = answer.get("ETag", "").strip('"')
        return ObjectInfo(key, int(answer["ContentLength"]), etag, meta.get("sha256"))

    def upload(self, path: Path, key: str, sha256: str) -> None:
        self._call(
            f"uploading {path.name}",
            self._client.upload_file,
            str(path),
            self.url.bucket,
            key,
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=self._transfer,
        )

    def download(self, key: str, path: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        """`key` into `path`; `on_bytes(n)` is called (from boto3's threads) as each n bytes arrive."""
        self._call(
            f"downloading {key}",
            self._client.download_file,
            self.url.bucket,
            key,
            str(path),
            Config=self._transfer,
            Callback=on_bytes,
        )

    def delete_prefix(self, prefix: str) -> int:
        keys = [prefix.rstrip("/") + "/" + o.key for o in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            answer = self._call(
                "deleting", self._client.delete_objects, Bucket=self.url.bucket, Delete={"Objects": batch}
            )
            errors = answer.get("Errors") or []  # a batch delete reports per-key failures, not raises
            if errors:
                first = errors[0]
                raise NetworkError(
                    f"deleting {len(errors)} object(s) under {self.url.scheme}://{self.url.bucket}/{prefix} "
                    f"failed: {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        return len(keys)

    def delete_key(self, key: str) -> None:
        self._call("deleting", self._client.delete_object, Bucket=self.url.bucket, Key=key)


def _boto_errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, S3UploadFailedError, OSError)


class GCSStore:
    """Google Cloud Storage through google-cloud-storage (credentials: Application Default Credentials)."""

    etag_part_size: int | None = None

    def __init__(self, url: StoreURL) -> None:
        try:
            from google.cloud import storage
        except ImportError:
            raise _missing("google-cloud-storage", "gcs", "gs") from None
        self.url = url
        from google.auth.exceptions import GoogleAuthError

        try:
            self._bucket = storage.Client().bucket(url.bucket)
        except (GoogleAuthError, OSError) as e:
            raise ConfigError(
                f"the credentials for gs:// cannot be found: {e}",
                hint="set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run "
                "`gcloud auth application-default login`",
            ) from None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from google.api_core import exceptions

        try:
            return fn(*args, **kwargs)
        except (exceptions.GoogleAPIError, OSError) as e:
            raise NetworkError(f"{what} on gs://{self.url.bucket} failed: {e}") from e

    @staticmethod
    def _info(key: str, blob: Any) -> ObjectInfo:
        md5 = base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
        return ObjectInfo(key, int(blob.size or 0), md5, (blob.metadata or {}).get("sha256"))

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = prefix.rstrip("/") + "/" if prefix else ""
        blobs = self._call("listing", lambda: list(self._bucket.client.list_blobs(self._bucket, prefix=base)))
        return [self._info(b.name[len(base) :], b) for b in blobs]

    def head(self, key: str) -> ObjectInfo | None:
        blob = self._call(f"reading {key}", self._bucket.get_blob, key, timeout=TIMEOUT_S)
        return None if blob is None else self._info(key, blob)

    def upload(self, path: Path, key: str, sha256: str) -> None:
        blob = self._bucket.blob(key)
        blob.metadata = {"sha256": sha256}
        self._call(f"uploading {path.name}", blob.upload_from_filename, str(path), timeout=TIMEOUT_S)

    def download(self, key: str, path: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        blob = self._bucket.blob(key)
        self._call(f"downloading {key}", blob.download_to_filename, str(path), timeout=TIMEOUT_S)
        if on_bytes is not None:
            on_bytes(path.stat().st_size)

    def delete_prefix(self, prefix: str) -> int:
        found = self.list(prefix)
        for info in found:
            self._call("deleting", self._bucket.delete_blob, prefix.rstrip("/") + "/" + info.key)
        return len(found)

    def delete_key(self, key: str) -> None:
        from google.api_core import exceptions

        try:
            self._call("deleting", self._bucket.delete_blob, key, timeout=TIMEOUT_S)
        except NetworkError as e:
            if not isinstance(e.__cause__, exceptions.NotFound):
                raise


def expected_etag(store: Store, path: Path) -> tuple[str, str]:
    """(the ETag `store` gives `path` once uploaded, sha256 of `path`), from one read of the file."""
    return multipart_etag(path, store.etag_part_size)
