"""What a server tells us about a file's content, and checking a downloaded file against it.

Servers offer different things: a size always (Content-Length), sometimes a digest in a header
(`x-checksum-sha256`, `x-amz-checksum-sha256`, `x-goog-hash`, `Content-MD5`, Hugging Face's
`X-Linked-Etag` for large files), and object stores an ETag that is the MD5 of a file uploaded in one
part. We use the strongest one present and fall back to the size.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GIT_BLOB_SHA1", "Checksum", "checksum_from_headers", "file_digest"]

GIT_BLOB_SHA1 = "git-sha1"
"""Git's object id of a file: SHA-1 of `blob {size}\\0` and the content (the Hub's `oid` of a small file)."""

_HEX = {"md5": 32, "sha1": 40, "sha256": 64}
_PLAIN_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name (md5, sha1, sha256), or GIT_BLOB_SHA1
    hexdigest: str
    source: str  # the header it came from, for messages

    def as_dict(self) -> dict[str, str]:
        return {"algorithm": self.algorithm, "hexdigest": self.hexdigest, "source": self.source}


def _hex(value: str, algorithm: str) -> str | None:
    value = value.strip().strip('"').lower()
    return value if re.fullmatch(rf"[0-9a-f]{{{_HEX[algorithm]}}}", value) else None


def _b64(value: str, algorithm: str) -> str | None:
    try:
        raw = base64.b64decode(value.strip().strip('"'), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) * 2 == _HEX[algorithm] else None


def _from_goog_hash(value: str) -> str | None:
    for part in value.split(","):
        name, _, digest = part.strip().partition("=")
        if name == "md5":
            return _b64(digest, "md5")
    return None


def _looks_like_object_store(headers: Mapping[str, str]) -> bool:
    server = headers.get("Server", "").lower()
    return any(k.lower().startswith(("x-amz-", "x-goog-")) for k in headers) or any(
        s in server for s in ("amazons3", "cloudflare", "r2", "minio")
    )


def checksum_from_headers(
    headers: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> Checksum | None:
    """The content digest a response's headers offer, strongest first; None if there is none.

    `extra` holds headers from a redirect that led to this response (Hugging Face puts the SHA-256 of a
    large file in the first answer's `X-Linked-Etag` and redirects to a CDN that does not repeat it).
    """
    extra = extra or {}
    candidates: list[tuple[str, str, str | None]] = [
        ("sha256", "x-checksum-sha256", _hex(headers.get("x-checksum-sha256", ""), "sha256")),
        ("sha256", "x-amz-checksum-sha256", _b64(headers.get("x-amz-checksum-sha256", ""), "sha256")),
        ("sha256", "x-linked-etag", _hex(extra.get("x-linked-etag", ""), "sha256")),
        ("sha1", "x-checksum-sha1", _hex(headers.get("x-checksum-sha1", ""), "sha1")),
        ("md5", "x-checksum-md5", _hex(headers.get("x-checksum-md5", ""), "md5")),
        ("md5", "x-goog-hash", _from_goog_hash(headers.get("x-goog-hash", ""))),
        ("md5", "content-md5", _b64(headers.get("content-md5", ""), "md5")),
    ]
    for algorithm, source, digest in candidates:
        if digest:
            return Checksum(algorithm, digest, source)
    # An object store's ETag is the MD5 of a single-part upload (multipart ones end in "-N", and are
    # not digests of the content). Other servers' ETags are opaque, so we only read it there.
    etag = headers.get("ETag", "")
    match = _PLAIN_ETAG.match(etag)
    if match and _looks_like_object_store(headers):
        return Checksum("md5", match[1].lower(), "etag")
    return None


def file_digest(path: Path, algorithm: str, block: int = 8 << 20) -> str:
    if algorithm == GIT_BLOB_SHA1:
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        digest = hashlib.new(algorithm)
    buffer = bytearray(block)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])  # hashlib drops the GIL for large updates
    return digest.hexdigest()
