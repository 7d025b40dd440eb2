"""Checkpoint directories on an object store: uploaded file by file (resumable, verified) with a manifest
written last, and downloaded back only when complete (docs/format.md §4.9).

Layout (upstream's): the checkpoint directory `D` of a run uploads to `{remote_save_folder}/{D.name}/`
with its files at the same relative paths, e.g. `s3://bucket/run/step20-unsharded/model.safetensors`.
olmo adds `olmo-upload.json` (`MANIFEST`) beside them, uploaded after every file is verified: a remote
checkpoint without it is incomplete (an upload cut short) and is never downloaded.

Everything a store answers is untrusted: names must be plain relative paths inside the destination,
sizes and SHA-256 digests are checked against the manifest before a file gets its final name, and the
disk must have room for what the manifest lists before anything is fetched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_cli.dirlock import waiting_lock
from olmo_cli.errors import CheckpointError, NetworkError
from olmo_cli.hub.objstore import ObjectInfo, Store, StoreURL, expected_etag
from olmo_cli.hub.paths import PARTIAL_SUFFIX, make_parents, safe_path
from olmo_cli.hub.space import existing, human_size

__all__ = [
    "MANIFEST",
    "UploadResult",
    "check_relative",
    "complete_checkpoints",
    "delete_checkpoint",
    "download_checkpoint",
    "upload_checkpoint",
]

MANIFEST = "olmo-upload.json"
FORMAT = "olmo-upload/1"
MAX_MANIFEST_BYTES = 4 << 20
PROGRESS_INTERVAL_S = 0.2
RETRY_DELAY_S = 1.0  # before the second try; doubling, at most 30 s
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DOWNLOADING = ".download"  # `.NAME.download`: a file on its way in, beside where it goes
_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")
Report = Callable[[str], None]
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


@dataclass(frozen=True)
class UploadResult:
    files: int
    uploaded: int  # files sent in this call (the others were there already, verified)
    bytes_sent: int


def check_relative(name: Any, source: str) -> str:
    """`name` if it is a plain relative POSIX path (no `..`, `.`, empty part, absolute path, backslash
    or NUL); CheckpointError otherwise."""
    parts = name.split("/") if isinstance(name, str) else []
    if (
        not parts
        or len(name) > 1024
        or any(p in ("", ".", "..") or "\\" in p or "\0" in p or p != p.strip() for p in parts)
        or (len(name) >= 2 and name[1] == ":")
    ):
        raise CheckpointError(
            f"{source} names the file {str(name)[:120]!r}, which is not a plain path inside the checkpoint; "
            "refused",
            hint="the remote checkpoint is damaged or was crafted to write elsewhere; use another one",
        )
    return name


def _local_files(directory: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                out.append(path.relative_to(directory).as_posix())
    return out


def _etag_matches(found: str | None, expected: str) -> bool | None:
    """Whether the store's ETag is the one computed here; None when it cannot be compared (no ETag, an
    opaque one, or one of another part layout, e.g. a file uploaded by another tool)."""
    found = (found or "").strip('"').lower()
    if not _ETAG.match(found) or found.partition("-")[2] != expected.partition("-")[2]:
        return None
    return found == expected


def _verified(info: ObjectInfo | None, size: int, sha256: str, etag: str) -> bool:
    """An object is this file when its size is the file's, the SHA-256 olmo stored with it (if any) is
    the file's, and its ETag, where comparable, is the file's MD5 (or S3's MD5 of the parts). One of
    the last two must be there to compare."""
    if info is None or info.size != size:
        return False
    if info.sha256 is not None and info.sha256 != sha256:
        return False
    same = _etag_matches(info.etag, etag)
    if same is False:
        return False
    return info.sha256 is not None or same is True


def _with_retries(what: str, fn: Callable[[], bool], attempts: int, report: Report | None) -> None:
    """Calls `fn` until it returns True (done and verified); NetworkError after `attempts` tries."""
    last = "the object did not verify (size or checksum differs)"
    for attempt in range(1, attempts + 1):
        try:
            if fn():
                return
            last = "the object did not verify (size or checksum differs)"
        except NetworkError as e:
            last = e.message
        if attempt < attempts:
            delay = min(RETRY_DELAY_S * 2.0 ** (attempt - 1), 30.0)
            if report:
                report(f"{what}: try {attempt} of {attempts} failed ({last}); retrying in {delay:g}s")
            time.sleep(delay)
    raise NetworkError(f"{what} failed after {attempts} tries: {last}")


def _manifest_bytes(directory: Path, entries: list[dict]) -> bytes:
    return json.dumps({"format": FORMAT, "name": directory.name, "files": entries}, indent=1).encode()


def _already_complete(store: Store, url: StoreURL, names: list[str], directory: Path) -> bool | None:
    """True when the store holds a complete copy of `directory` (its manifest lists exactly the local
    files with their sizes, and the store holds each at that size): its files were verified by checksum
    when they were uploaded. False when a manifest is there that does not match; None when there is
    none."""
    listed = {i.key: i for i in store.list(url.prefix)}
    if MANIFEST not in listed:
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = _read_manifest(store, url, listed, Path(tmp))
    except CheckpointError:
        return False
    sizes = {f["name"]: f["size"] for f in files}
    local = {name: (directory / name).stat().st_size for name in names}
    if sizes != local:
        return False
    return all(name in listed and listed[name].size == size for name, size in sizes.items())


def upload_checkpoint(
    store: Store,
    directory: Path,
    url: StoreURL,
    *,
    attempts: int = 3,
    report: Report | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> UploadResult | None:
    """Uploads every file of `directory` to `url` (a checkpoint's remote prefix) and then the manifest.

    A complete remote copy (its manifest matches the local files) is left as it is; otherwise a file
    already there with the same size and checksum is not sent again, so a second call after an
    interruption sends only what is missing or damaged. A manifest that does not match is deleted
    first, so the checkpoint reads as incomplete while it is replaced. Each upload is read back (size,
    SHA-256, ETag) before the next. Returns None when `cancelled()` or when the local directory goes
    away meanwhile (retention deleted it)."""
    if not directory.is_dir():
        return None
    try:
        return _upload(store, directory, url, attempts, report, cancelled)
    except OSError:
        if not directory.is_dir():
            return None
        raise


def _upload(
    store: Store,
    directory: Path,
    url: StoreURL,
    attempts: int,
    report: Report | None,
    cancelled: Callable[[], bool],
) -> UploadResult | None:
    names = [n for n in _local_files(directory) if n != MANIFEST]
    complete = _already_complete(store, url, names, directory)
    if complete:
        return UploadResult(len(names), 0, 0)
    if complete is False:
        store.delete_key(url.key(MANIFEST))
    entries, sent, sent_bytes = [], 0, 0

    def gone() -> bool:
        return cancelled() or not directory.is_dir()

    for name in names:
        if gone():
            return None
        path = directory / name
        size = path.stat().st_size
        etag, sha = expected_etag(store, path)
        key = url.key(name)
        entries.append({"name": name, "size": size, "sha256": sha})
        if _verified(store.head(key), size, sha, etag):
            continue

        def attempt(
            path: Path = path, key: str = key, size: int = size, sha: str = sha, etag: str = etag
        ) -> bool:
            if gone():
                return True  # the loop below returns None
            try:
                store.upload(path, key, sha)
            except NetworkError:
                if gone():  # the file went with its checkpoint (retention): not a failure of the store
                    return True
                raise
            return _verified(store.head(key), size, sha, etag)

        _with_retries(f"uploading {url}/{name}", attempt, attempts, report)
        sent, sent_bytes = sent + 1, sent_bytes + size
    if gone():
        return None
    data = _manifest_bytes(directory, entries)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, MANIFEST)
        local.write_bytes(data)
        etag, sha = expected_etag(store, local)
        key = url.key(MANIFEST)

        def attempt_manifest() -> bool:
            store.upload(local, key, sha)
            return _verified(store.head(key), len(data), sha, etag)

        _with_retries(f"uploading {url}/{MANIFEST}", attempt_manifest, attempts, report)
    return UploadResult(len(names), sent, sent_bytes)


def delete_checkpoint(store: Store, url: StoreURL) -> int:
    """Deletes a remote checkpoint, its manifest first, so a deletion cut short leaves it incomplete."""
    store.delete_key(url.key(MANIFEST))
    return store.delete_prefix(url.prefix)


def complete_checkpoints(store: Store, run: StoreURL) -> list[str]:
    """Names of the checkpoint directories directly under `run` that have a manifest (complete ones)."""
    names = []
    for info in store.list(run.prefix):
        first, _, rest = info.key.partition("/")
        if rest == MANIFEST:
            names.append(first)
    return names


def _read_manifest(store: Store, url: StoreURL, listed: dict[str, ObjectInfo], scratch: Path) -> list[dict]:
    """The manifest's file entries, each checked: a plain relative name (once), a size, a SHA-256."""
    info = listed.get(MANIFEST)
    if info is None:
        raise CheckpointError(
            f"{url} is not a complete checkpoint: it has no {MANIFEST}",
            hint="its upload did not finish (olmo uploads the manifest last); use an earlier checkpoint, or "
            "let the run that writes it resume so the upload completes",
        )
    source = f"{url}/{MANIFEST}"
    if info.size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{source} is {info.size:,} bytes, more than a manifest can be; refused")
    local = scratch / MANIFEST
    store.download(url.key(MANIFEST), local)
    try:
        if local.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"more than {MAX_MANIFEST_BYTES:,} bytes")
        manifest = json.loads(local.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{source} is not a valid manifest ({e})") from None
    finally:
        local.unlink(missing_ok=True)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(files, list):
        raise CheckpointError(f"{source} is not an {FORMAT} manifest")
    seen: set[str] = set()
    for entry in files:
        size = entry.get("size") if isinstance(entry, dict) else None
        ok = isinstance(size, int) and not isinstance(size, bool) and size >= 0
        if not ok or not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            raise CheckpointError(
                f"{source} lists a file without a valid size and sha256: {str(entry)[:200]}"
            )
        name = check_relative(entry.get("name"), source)
        base = name.rsplit("/", 1)[-1]
        if name in seen or name == MANIFEST or (base.startswith(".") and base.endswith(_DOWNLOADING)):
            raise CheckpointError(f"{source} lists {name!r} twice, or a name olmo uses itself; refused")
        seen.add(name)
    return files


def download_checkpoint(
    store: Store,
    url: StoreURL,
    dest: Path,
    *,
    report: Report | None = None,
    progress: Progress | None = None,
) -> Path:
    """Downloads the complete remote checkpoint `url` into `dest/{url.name}` and returns that directory.

    Files arrive in `dest/{name}.partial/` and are checked against the manifest (size, SHA-256); the
    directory gets its final name only when all are there. A file already in the partial directory that
    verifies is kept, so an interrupted download resumes. An existing `dest/{name}` (complete: it got
    its name only once verified) is used as it is. Nothing is written outside `dest`."""
    name = check_relative(url.name, str(url))
    if "/" in name:
        raise CheckpointError(f"{url} does not name a checkpoint directory")
    dest.mkdir(parents=True, exist_ok=True)
    final = safe_path(dest, name)
    # Ranks started by torchrun on one node download the same checkpoint: one does, the others then
    # find it complete.
    with waiting_lock(safe_path(dest, f".{name}.lock")):
        if final.is_dir():
            if report:
                report(f"{url} was downloaded before: using {final}")
            return final
        return _download_into(store, url, dest, name, final, report, progress)


def _download_into(
    store: Store,
    url: StoreURL,
    dest: Path,
    name: str,
    final: Path,
    report: Report | None,
    progress: Progress | None,
) -> Path:
    listed = {check_relative(i.key, f"the listing of {url}"): i for i in store.list(url.prefix)}
    if not listed:
        raise CheckpointError(
            f"no checkpoint at {url}: the store holds nothing under it",
            hint="check the URL (a checkpoint is RUN_URL/stepN-unsharded or RUN_URL/stepN)",
        )
    partial = safe_path(dest, name + PARTIAL_SUFFIX)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".olmo-manifest-") as scratch:
        files = _read_manifest(store, url, listed, Path(scratch))
    for entry in files:  # before any byte is fetched: the store must hold what the manifest lists
        info = listed.get(entry["name"])
        if info is None or info.size != entry["size"]:
            have = "missing" if info is None else f"{info.size:,} bytes"
            raise CheckpointError(
                f"{url}/{entry['name']} is {have}, but the manifest says {entry['size']:,} bytes",
                hint="the remote checkpoint is damaged; use another one",
            )
    partial.mkdir(exist_ok=True)
    if partial.is_symlink() or not partial.is_dir():
        raise CheckpointError(f"refusing to write into {partial}: not a directory")
    total = sum(f["size"] for f in files)
    kept = {f["name"] for f in files if _is_verified_file(partial, f)}
    need = sum(f["size"] for f in files if f["name"] not in kept)
    free = shutil.disk_usage(existing(partial)).free
    if need > free:
        raise CheckpointError(
            f"not enough disk space in {dest} for {url}: {human_size(need)} to download, {human_size(free)} "
            "free",
            hint="free some space, or point XDG_CACHE_HOME (the download cache) at a larger disk",
        )
    if report:
        report(f"downloading {url} ({len(files)} files, {human_size(total)}) into {final}")
    done = total - need
    for entry in files:
        if entry["name"] in kept:
            continue
        _fetch_file(store, url, partial, entry, done, total, progress)
        done += entry["size"]
        if progress:
            progress(done, total)
    os.replace(partial, final)
    return final


def _is_verified_file(partial: Path, entry: dict) -> bool:
    from olmo_cli.hub.checksum import file_digest

    target = safe_path(partial, entry["name"])
    return (
        target.is_file()
        and not target.is_symlink()
        and target.stat().st_size == entry["size"]
        and file_digest(target, "sha256") == entry["sha256"]
    )


def _download_with_progress(
    store: Store, key: str, path: Path, done: int, total: int, progress: Progress | None
) -> None:
    """`store.download` in a thread, with `progress` called from this one as bytes arrive."""
    if progress is None:
        store.download(key, path)
        return
    got = [0]
    lock = threading.Lock()
    failure: list[BaseException] = []

    def on_bytes(n: int) -> None:
        with lock:
            got[0] += n

    def work() -> None:
        try:
            store.download(key, path, on_bytes)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            failure.append(e)

    thread = threading.Thread(target=work, name="olmo-remote-download", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(PROGRESS_INTERVAL_S)
        with lock:
            progress(done + got[0], total)
    if failure:
        raise failure[0]


def _fetch_file(
    store: Store, url: StoreURL, partial: Path, entry: dict, done: int, total: int, progress: Progress | None
) -> None:
    from olmo_cli.hub.checksum import file_digest

    rel, size, sha = entry["name"], entry["size"], entry["sha256"]
    target = safe_path(partial, rel)
    make_parents(partial, rel)
    tmp = target.with_name(f".{target.name}{_DOWNLOADING}")
    for attempt in range(3):
        try:
            _download_with_progress(store, url.key(rel), tmp, done, total, progress)
        except NetworkError:
            if attempt == 2:
                tmp.unlink(missing_ok=True)
                raise
            time.sleep(RETRY_DELAY_S)
            continue
        if tmp.is_file() and tmp.stat().st_size == size and file_digest(tmp, "sha256") == sha:
            os.replace(tmp, target)
            return
        if attempt < 2:
            time.sleep(RETRY_DELAY_S)
    tmp.unlink(missing_ok=True)
    raise CheckpointError(
        f"{url}/{rel} does not match its manifest (size or sha256) after 3 downloads",
        hint="the remote checkpoint is damaged; use another one",
    )
