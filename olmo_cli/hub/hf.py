"""Revisions of a Hugging Face model repository, through the Hub's HTTP API.

OLMo's repositories keep every intermediate checkpoint as a branch: OLMo 1's are named
`step{N}-tokens{T}` (e.g. `step1000-tokens4B`), OLMo 2's `stage1-step{N}-tokens{T}B` and
`stage2-ingredient{K}-step{N}-tokens{T}B` (e.g. `stage2-ingredient1-step11931-tokens50B`);
`GET {endpoint}/api/models/{repo}/refs` lists them.

A revision's files come from `GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true` (a JSON
list of `{"type", "path", "size", "oid", "lfs": {"oid", "size"}}`, paged with `Link: <...>; rel="next"`),
and download from `{endpoint}/{repo}/resolve/{revision}/{path}`: each with its size, and the SHA-256 of
an LFS file (`lfs.oid`) or the git blob SHA-1 of a small one (`oid`) to check it against. The answer is
untrusted: paths that could land outside the destination, odd sizes or digests, and listings too long
or too large are refused before anything is written.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from olmo_cli.errors import NetworkError, UsageError
from olmo_cli.hub.checksum import GIT_BLOB_SHA1, Checksum
from olmo_cli.hub.http import RetryPolicy, as_network_error, check_status, is_transient_error, request
from olmo_cli.hub.listing import RemoteFile
from olmo_cli.hub.space import human_size

__all__ = [
    "DEFAULT_ENDPOINT",
    "MAX_TREE_BYTES",
    "MAX_TREE_ENTRIES",
    "Revision",
    "check_repo",
    "check_revision",
    "list_repo_files",
    "list_revisions",
    "parse_revision",
    "parse_tokens",
    "revision_dir_name",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_BRANCH = re.compile(
    r"^(?:stage(?P<stage>\d{1,2})-(?:ingredient(?P<ingredient>[A-Za-z0-9_]{1,32})-)?)?"
    r"step(?P<step>\d{1,18})(?:-tokens(?P<tokens>\d{1,15}(?:\.\d{1,6})?[KMBT]?))?$",
    re.IGNORECASE,
)
_SCALE = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
MAX_TREE_ENTRIES = 100_000
"""The most entries (files and directories) a revision's listing may have, all pages together."""
MAX_TREE_BYTES = 64 << 20
"""The largest listing page read (the Hub's pages are a few hundred KiB)."""
MAX_TREE_PAGES = 1000
MAX_PATH_CHARS = 1024
MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a lie
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
# Names the downloader keeps next to a file being fetched, and its completion record: a repository
# file with one of these names would be mistaken for them.
_RESERVED = re.compile(r"^\..+\.part(\.cursors|\.json)?$")
MARKER_NAME = ".olmo-download.json"


@dataclass(frozen=True)
class Revision:
    name: str
    step: int | None  # None for branches that are not intermediate checkpoints (main)
    tokens: int | None
    commit: str | None
    stage: int | None = None  # OLMo 2's names say the stage (1, 2); None for OLMo 1's and for main
    ingredient: str | None = None  # OLMo 2 stage 2's ingredient ("1", ...); None elsewhere

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.name,
            "step": self.step,
            "tokens": self.tokens,
            "stage": self.stage,
            "ingredient": self.ingredient,
            "commit": self.commit,
        }


def parse_tokens(text: str) -> int:
    """'4B' -> 4_000_000_000 (the branch names round to the unit shown)."""
    unit = text[-1].upper() if text[-1].isalpha() else ""
    return round(float(text[: len(text) - len(unit)]) * _SCALE[unit])


def parse_revision(name: str, commit: str | None = None) -> Revision:
    """What a branch name says: step, tokens, stage and ingredient where it is a checkpoint's name."""
    match = _BRANCH.match(name)
    if match is None:
        return Revision(name, None, None, commit)
    tokens = parse_tokens(match["tokens"]) if match["tokens"] else None
    stage = int(match["stage"]) if match["stage"] else None
    return Revision(name, int(match["step"]), tokens, commit, stage, match["ingredient"])


def _revision(ref: dict[str, Any]) -> Revision:
    commit = ref.get("targetCommit")
    return parse_revision(str(ref.get("name", "")), commit if isinstance(commit, str) else None)


def check_repo(repo: str) -> str:
    if not _REPO.match(repo) or ".." in repo:
        raise UsageError(
            f"{repo!r} is not a Hugging Face repository name",
            hint="give it as ORG/NAME, e.g. --repo allenai/OLMo-2-1124-7B",
        )
    return repo


def check_revision(revision: str) -> str:
    if not _REVISION.match(revision) or any(p in ("", ".", "..") for p in revision.split("/")):
        raise UsageError(
            f"{revision!r} is not a revision name",
            hint="give a branch, tag or commit, e.g. --revision main or "
            "--revision stage1-step928646-tokens3896B",
        )
    return revision


def revision_dir_name(revision: str) -> str:
    """The directory a revision downloads into: its name, with `/` (refs/pr/1) as `--`."""
    return check_revision(revision).replace("/", "--")


def _get_json(url: str, headers: dict[str, str], policy: RetryPolicy, max_bytes: int = MAX_TREE_BYTES) -> Any:
    return _get_json_page(url, headers, policy, max_bytes)[0]


def _read_body(response: Any, url: str, max_bytes: int) -> bytes:
    body = bytearray()
    for block in response.iter_content(1 << 16):
        body += block
        if len(body) > max_bytes:
            raise NetworkError(
                f"{url}: the answer is larger than {human_size(max_bytes)} (the limit); refusing it",
                hint="check HF_ENDPOINT: the Hub's listings are far smaller",
            )
    return bytes(body)


def _get_json_page(
    url: str, headers: dict[str, str], policy: RetryPolicy, max_bytes: int
) -> tuple[Any, str | None]:
    """The JSON of one answer (at most `max_bytes`) and the URL of its next page, if any."""
    failures = 0
    while True:
        try:
            with request("GET", url, headers=headers, timeout=policy.timeout) as response:
                check_status(response, url, what="repository")
                body = _read_body(response, url, max_bytes)
                following = response.links.get("next", {}).get("url")
                return json.loads(body), urljoin(url, following) if following else None
        except NetworkError:
            raise
        except Exception as exc:
            if not is_transient_error(exc):
                if isinstance(exc, ValueError):  # not JSON
                    raise
                raise as_network_error(exc, url) from exc
            failures += 1
            if failures >= policy.attempts:
                raise NetworkError(f"{url}: {exc}", hint="check the network and try again") from exc
            time.sleep(policy.delay(failures))


def list_revisions(
    repo: str, *, endpoint: str | None = None, token: str | None = None, policy: RetryPolicy | None = None
) -> list[Revision]:
    """The repository's branches, intermediate checkpoints sorted by step, other branches after them."""
    url = f"{(endpoint or DEFAULT_ENDPOINT).rstrip('/')}/api/models/{check_repo(repo)}/refs"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        data = _get_json(url, headers, policy or RetryPolicy())
    except NetworkError as exc:
        if "HTTP 404" in exc.message or "HTTP 401" in exc.message:
            raise NetworkError(
                f"Hugging Face repository {repo} not found at {endpoint or DEFAULT_ENDPOINT}",
                hint="check the name; for a private or gated repository set HF_TOKEN",
            ) from exc
        raise
    except ValueError as exc:  # not JSON
        raise NetworkError(f"{url} did not answer with JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("branches"), list):
        raise NetworkError(f"{url}: unexpected answer (no 'branches' list)")
    revisions = [_revision(ref) for ref in data["branches"] if isinstance(ref, dict)]
    return sorted(revisions, key=_order)


def _order(r: Revision) -> tuple[Any, ...]:
    """Intermediate checkpoints by stage, ingredient (numbers in numeric order) and step; others after."""
    ingredient = r.ingredient or ""
    return (
        r.step is None,
        r.stage or 0,
        not ingredient.isdigit(),
        int(ingredient) if ingredient.isdigit() else 0,
        ingredient,
        r.step or 0,
        r.name,
    )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _refuse(where: str, problem: str) -> NetworkError:
    return NetworkError(
        f"{where}: {problem}; refusing the listing (nothing was written)",
        hint="the Hub (or whatever HF_ENDPOINT points at) sent an answer olmo will not act on; check "
        "HF_ENDPOINT and the repository",
    )


def _check_path(path: object, where: str) -> str:
    """A repository path that can only name a file inside the destination."""
    if not isinstance(path, str) or not path:
        raise _refuse(where, f"a file without a path ({_show(path)})")
    if len(path) > MAX_PATH_CHARS:
        raise _refuse(where, f"a path longer than {MAX_PATH_CHARS} characters")
    parts = path.split("/")
    bad = (
        path.startswith("/")
        or any(c in path for c in ("\\", "\0"))
        or any(ord(c) < 32 or c == "\x7f" for c in path)
        or any(p in ("", ".", "..") or p != p.strip() for p in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
        or any(_RESERVED.match(p) for p in parts)
        or path == MARKER_NAME
    )
    if bad:
        raise _refuse(where, f"the path {_show(path)} is not a plain relative path inside the revision")
    return path


def _check_size(entry: dict[str, Any], where: str) -> int:
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < MAX_FILE_SIZE:
        raise _refuse(where, f"{_show(entry.get('path'))} has the size {_show(size)}, not a byte count")
    return size


def _checksum(entry: dict[str, Any], size: int, where: str) -> Checksum | None:
    """The SHA-256 of an LFS file, else the git blob SHA-1; None where the entry gives neither."""
    lfs = entry.get("lfs")
    name = _show(entry.get("path"))
    if lfs is not None:
        if not isinstance(lfs, dict):
            raise _refuse(where, f"{name} has an 'lfs' that is not an object")
        oid, lfs_size = lfs.get("oid"), lfs.get("size", size)
        if not isinstance(oid, str) or not _SHA256.match(oid):
            raise _refuse(where, f"{name} has the LFS oid {_show(oid)}, not a SHA-256")
        if lfs_size != size:
            raise _refuse(where, f"{name} has the size {size} but its LFS object {_show(lfs_size)}")
        return Checksum("sha256", oid, "hub lfs oid")
    oid = entry.get("oid")
    if isinstance(oid, str) and _SHA1.match(oid):
        return Checksum(GIT_BLOB_SHA1, oid, "hub blob oid")
    return None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def list_repo_files(
    repo: str,
    revision: str,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    policy: RetryPolicy | None = None,
) -> list[RemoteFile]:
    """The files of `repo` at `revision`, checked (see the module docstring), with their resolve URLs."""
    base = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    check_repo(repo)
    quoted = quote(check_revision(revision), safe="")
    url: str | None = f"{base}/api/models/{repo}/tree/{quoted}?recursive=true"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    policy = policy or RetryPolicy()
    entries: list[tuple[str, dict[str, Any]]] = []
    seen_pages: set[str] = set()
    while url is not None:
        if url in seen_pages or len(seen_pages) >= MAX_TREE_PAGES:
            raise _refuse(url, f"the listing's pages loop or pass {MAX_TREE_PAGES}")
        if _origin(url) != _origin(base):  # the token goes to the endpoint only
            raise _refuse(url, f"a next page on another host than {base}")
        seen_pages.add(url)
        try:
            data, following = _get_json_page(url, headers, policy, MAX_TREE_BYTES)
        except NetworkError as exc:
            if "HTTP 404" in exc.message or "HTTP 401" in exc.message:
                raise NetworkError(
                    f"Hugging Face repository {repo} has no revision {revision!r} at {base} (or no such "
                    "repository)",
                    hint="check --repo and --revision (`olmo checkpoints list --source hf --model NAME` "
                    "lists a published model's revisions); for a private or gated repository set HF_TOKEN",
                ) from exc
            raise
        except ValueError as exc:
            raise _refuse(url, f"the answer is not JSON ({exc})") from exc
        if not isinstance(data, list):
            raise _refuse(url, "the answer is not a list of files")
        entries += [(url, e) for e in data]
        if len(entries) > MAX_TREE_ENTRIES:
            raise _refuse(url, f"more than {MAX_TREE_ENTRIES} entries")
        url = following
    files: dict[str, RemoteFile] = {}
    directories: set[str] = set()
    auth = tuple(headers.items())
    for where, entry in entries:
        if not isinstance(entry, dict) or entry.get("type") not in ("file", "directory"):
            raise _refuse(where, f"an entry that is neither a file nor a directory: {_show(entry)}")
        path = _check_path(entry.get("path"), where)
        if entry["type"] == "directory":
            directories.add(path)
            continue
        if path in files or path in directories:
            raise _refuse(where, f"the path {_show(path)} is listed twice")
        size = _check_size(entry, where)
        files[path] = RemoteFile(
            name=path,
            url=f"{base}/{repo}/resolve/{quoted}/{quote(path)}",
            size=size,
            checksum=_checksum(entry, size, where),
            ranges=True,  # the Hub and the CDNs it redirects to answer byte ranges
            headers=auth,
        )
    for path in files:  # a file may not also be a directory of another path ("a" and "a/b")
        parents = {"/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)}
        clash = next((p for p in sorted(parents) if p in files), None)
        if clash is not None:
            raise _refuse(base, f"{_show(clash)} is listed as a file and as the directory of {_show(path)}")
    if not files:
        raise NetworkError(
            f"Hugging Face repository {repo} has no files at revision {revision!r}",
            hint="check --revision (`main` is the latest)",
        )
    return sorted(files.values(), key=lambda f: f.name)
