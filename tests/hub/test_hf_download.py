"""`olmo checkpoints download --source hf`: every file of one revision of a Hugging Face repository, listed
by a fake Hub's tree API on 127.0.0.1 (paged), fetched through the same resumable, verified downloader
as the official source, and refused when the listing is hostile."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from olmo_cli.checkpoint.kind import checkpoint_kind
from olmo_cli.errors import CheckpointError, NetworkError, UsageError
from olmo_cli.hub import hf
from olmo_cli.hub.download import MARKER, DownloadOptions, download, plan_revision
from olmo_cli.hub.events import FileDone, Retrying
from tests._http_server import Fault, Server

from ._helpers import FAST, files_under, run_cli

REPO = "allenai/OLMo-2-1124-7B"
REVISION = "stage1-step928646-tokens3896B"
FILES = {
    "config.json": b'{"model_type": "olmo2"}\n',
    "generation_config.json": b"{}\n",
    "model-00001-of-00002.safetensors": bytes(range(256)) * 12_345,  # ~3 MiB: several ranges
    "model-00002-of-00002.safetensors": b"w" * 700_001,
    "model.safetensors.index.json": b'{"weight_map": {}}\n',
    "tokenizer.json": b'{"version": "1.0"}\n',
    "original/notes.txt": b"a file in a folder\n",
}
TOKEN = "hf_secret"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def tree_path(repo: str, revision: str, page: int = 0) -> str:
    return f"api/models/{repo}/tree/{revision}?recursive=true" + (f"&cursor={page}" if page else "")


def serve_tree(
    server: Server, entries: list[Any], *, repo: str = REPO, revision: str = REVISION, per_page: int = 3
) -> None:
    """The tree API's answer for `revision`, `per_page` entries a page, linked by `Link: rel="next"`."""
    pages = [entries[i : i + per_page] for i in range(0, len(entries), per_page)] or [[]]
    for i, page in enumerate(pages):
        server.add_bytes(tree_path(repo, revision, i), json.dumps(page).encode())
        if i + 1 < len(pages):
            server.extra_headers[tree_path(repo, revision, i)] = {
                "Link": f'<{server.url(tree_path(repo, revision, i + 1))}>; rel="next"'
            }


def serve_repo(
    server: Server,
    files: dict[str, bytes] = FILES,
    *,
    repo: str = REPO,
    revision: str = REVISION,
    **tree: Any,
) -> list[dict[str, Any]]:
    """Serve `files` at `revision` as the Hub does: small files from `resolve`, LFS ones (safetensors)
    redirected to a CDN; returns the tree entries."""
    entries: list[dict[str, Any]] = [{"type": "directory", "path": "original", "oid": "0" * 40, "size": 0}]
    for path, data in files.items():
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
        resolve = f"{repo}/resolve/{revision}/{path}"
        if path.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
            server.add_bytes(f"cdn/{sha}", data)
            # another host name for the same server: a CDN, as far as the client can tell
            server.redirects[resolve] = server.url(f"cdn/{sha}").replace("127.0.0.1", "localhost")
        else:
            server.add_bytes(resolve, data)
        entries.append(entry)
    serve_tree(server, entries, repo=repo, revision=revision, **tree)
    return entries


def options(server: Server, **kw: Any) -> DownloadOptions:
    return DownloadOptions(
        jobs=4, chunk_size=1 << 20, policy=FAST, hf_endpoint=server.base_url, hf_token=TOKEN, **kw
    )


def fetch(server: Server, dest: Path, revision: str = REVISION) -> list[Any]:
    events: list[Any] = []
    opts = options(server)
    download([plan_revision(REPO, revision, dest, opts)], opts, events.append)
    return events


def test_every_file_of_a_revision_downloads_verified_and_the_token_stays_on_the_hub(
    server: Server, tmp_path: Path
) -> None:
    serve_repo(server)
    events = fetch(server, tmp_path)
    got = files_under(tmp_path / REVISION)
    manifest = json.loads(got.pop(MARKER))
    assert got == FILES
    verified = {e.key[1]: e.verified_by for e in events if isinstance(e, FileDone)}
    assert verified == {
        name: "sha256 (hub lfs oid)" if name.endswith(".safetensors") else "git-sha1 (hub blob oid)"
        for name in FILES
    }
    assert (manifest["repo"], manifest["revision"], manifest["step"]) == (REPO, REVISION, 928646)
    assert manifest["url"] == f"hf://{REPO}@{REVISION}/" and len(manifest["files"]) == len(FILES)
    # every page of the listing was read; the token went to the Hub, never to the CDN it redirects to
    assert all(server.seen(tree_path(REPO, REVISION, i)) for i in range(3))
    for logged in server.log:
        sent = logged.headers.get("Authorization")
        assert sent == (None if logged.path.startswith("cdn/") else f"Bearer {TOKEN}"), logged.path
    assert server.served(prefix="cdn/") == sum(len(d) for n, d in FILES.items() if n.endswith(".safetensors"))
    # once there, a second run fetches nothing
    server.reset_log()
    again = plan_revision(REPO, REVISION, tmp_path, options(server))
    assert again.complete and again.missing == 0
    assert server.served(prefix="cdn/") == 0


def test_a_dropped_connection_resumes_from_the_bytes_on_disk(server: Server, tmp_path: Path) -> None:
    serve_repo(server)
    big = hashlib.sha256(FILES["model-00001-of-00002.safetensors"]).hexdigest()
    server.fault(f"cdn/{big}", Fault("drop", after=300_000), Fault("drop", after=10))
    server.fault(f"{REPO}/resolve/{REVISION}/config.json", Fault("drop", after=5))
    events = fetch(server, tmp_path)
    got = files_under(tmp_path / REVISION)
    got.pop(MARKER)
    assert got == FILES
    assert sum(isinstance(e, Retrying) for e in events) >= 3
    size = len(FILES["model-00001-of-00002.safetensors"])
    assert server.served(f"cdn/{big}") <= size + 2 * (1 << 20)  # at most the unfinished ranges again


def test_a_file_whose_sha256_is_wrong_is_refused(server: Server, tmp_path: Path) -> None:
    entries = serve_repo(server)
    lfs = next(e for e in entries if e["path"] == "model-00002-of-00002.safetensors")
    lfs["lfs"]["oid"] = hashlib.sha256(b"another file").hexdigest()
    serve_tree(server, entries)
    with pytest.raises(CheckpointError, match="does not match what the server announced, twice: sha256"):
        fetch(server, tmp_path)
    assert not (tmp_path / REVISION).exists()
    assert not (tmp_path / f"{REVISION}.partial" / "model-00002-of-00002.safetensors").exists()


def test_a_small_file_whose_git_oid_is_wrong_is_refused(server: Server, tmp_path: Path) -> None:
    entries = serve_repo(server)
    next(e for e in entries if e["path"] == "config.json")["oid"] = git_oid(b"something else")
    serve_tree(server, entries)
    with pytest.raises(CheckpointError, match="git-sha1"):
        fetch(server, tmp_path)
    assert not (tmp_path / REVISION).exists()


def _file(path: Any, size: Any = 3, **extra: Any) -> dict[str, Any]:
    return {"type": "file", "path": path, "size": size, "oid": git_oid(b"abc"), **extra}


@pytest.mark.parametrize(
    "entry, problem",
    [
        (_file("/etc/passwd"), "not a plain relative path"),
        (_file("../outside.txt"), "not a plain relative path"),
        (_file("a/../../outside.txt"), "not a plain relative path"),
        (_file("a\\..\\x"), "not a plain relative path"),
        (_file("x\0y"), "not a plain relative path"),
        (_file("a//b"), "not a plain relative path"),
        (_file("C:x"), "not a plain relative path"),
        (_file(" x"), "not a plain relative path"),
        (_file("bell\x07"), "not a plain relative path"),
        (_file(MARKER), "not a plain relative path"),
        (_file(".model.safetensors.part"), "not a plain relative path"),
        (_file("sub/.x.part.json"), "not a plain relative path"),
        (_file(""), "without a path"),
        (_file(7), "without a path"),
        (_file("a" * 2000), "longer than"),
        (_file("x", size=-1), "not a byte count"),
        (_file("x", size="12"), "not a byte count"),
        (_file("x", size=1.5), "not a byte count"),
        (_file("x", size=True), "not a byte count"),
        (_file("x", size=1 << 60), "not a byte count"),
        (_file("x", lfs={"oid": "not-hex", "size": 3}), "not a SHA-256"),
        (_file("x", lfs={"oid": "a" * 64, "size": 4}), "its LFS object"),
        (_file("x", lfs="yes"), "not an object"),
        ({"type": "symlink", "path": "x"}, "neither a file nor a directory"),
        ("config.json", "neither a file nor a directory"),
        (_file("config.json"), "listed twice"),
        (_file("config.json/inner"), "as a file and as the directory"),
    ],
)
def test_a_hostile_listing_is_refused_before_anything_is_written(
    server: Server, tmp_path: Path, entry: Any, problem: str
) -> None:
    entries = serve_repo(server, {"config.json": b"{}"})
    serve_tree(server, [*entries, entry])
    dest = tmp_path / "dest"
    with pytest.raises(NetworkError, match="refusing the listing") as info:
        plan_revision(REPO, REVISION, dest, options(server))
    assert problem in info.value.message
    assert not dest.exists() and not server.seen(f"{REPO}/resolve/{REVISION}/config.json")


def test_listings_too_long_too_large_or_looping_are_refused(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_repo(server, {f"f{i}.txt": b"x" for i in range(8)}, per_page=3)
    monkeypatch.setattr(hf, "MAX_TREE_ENTRIES", 5)
    with pytest.raises(NetworkError, match="more than 5 entries"):
        plan_revision(REPO, REVISION, tmp_path / "d", options(server))
    monkeypatch.undo()
    monkeypatch.setattr(hf, "MAX_TREE_BYTES", 100)
    with pytest.raises(NetworkError, match="larger than 100 bytes"):
        plan_revision(REPO, REVISION, tmp_path / "d", options(server))
    monkeypatch.undo()
    last = tree_path(REPO, REVISION, 2)
    server.extra_headers[last] = {"Link": f'<{server.url(tree_path(REPO, REVISION, 0))}>; rel="next"'}
    with pytest.raises(NetworkError, match="loop"):
        plan_revision(REPO, REVISION, tmp_path / "d", options(server))
    server.extra_headers[last] = {"Link": '<http://elsewhere.invalid/page>; rel="next"'}
    with pytest.raises(NetworkError, match="another host"):
        plan_revision(REPO, REVISION, tmp_path / "d", options(server))
    server.files[tree_path(REPO, REVISION, 0)] = b'{"not": "a list"}'
    with pytest.raises(NetworkError, match="not a list of files"):
        plan_revision(REPO, REVISION, tmp_path / "d", options(server))
    assert not (tmp_path / "d").exists()


def test_unknown_revisions_and_bad_names(server: Server, tmp_path: Path) -> None:
    with pytest.raises(NetworkError) as info:
        plan_revision(REPO, "stage1-step1-tokens1B", tmp_path, options(server))
    assert f"{REPO} has no revision 'stage1-step1-tokens1B'" in info.value.message and info.value.hint
    for repo, revision in (("../etc", "main"), ("a/b/c", "main"), (REPO, "../main"), (REPO, "a\nb")):
        with pytest.raises(UsageError):
            plan_revision(repo, revision, tmp_path, options(server))


def test_the_cli_plans_downloads_and_resumes_a_revision(server: Server, tmp_path: Path) -> None:
    serve_repo(server)
    dest = tmp_path / "hf"
    env = {"HF_ENDPOINT": server.base_url, "HF_TOKEN": TOKEN}
    base = ["download", "--source", "hf", "--model", "olmo2-7b", "--revision", REVISION, "-o", str(dest)]
    proc = run_cli(*base, "--dry-run", "--json", tmp=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    [plan] = json.loads(proc.stdout)
    assert (plan["repo"], plan["revision"], plan["step"], plan["complete"]) == (REPO, REVISION, 928646, False)
    assert plan["path"] == str(dest / REVISION) and plan["to_fetch"] == sum(map(len, FILES.values()))
    by_name = {f["name"]: f for f in plan["files"]}
    assert by_name["config.json"]["checksum"]["algorithm"] == "git-sha1"
    assert by_name["model-00002-of-00002.safetensors"]["checksum"] == {
        "algorithm": "sha256",
        "hexdigest": hashlib.sha256(FILES["model-00002-of-00002.safetensors"]).hexdigest(),
        "source": "hub lfs oid",
    }
    assert TOKEN not in proc.stdout and server.served(prefix="cdn/") == 0 and not dest.exists()

    proc = run_cli(*base, "--json", tmp=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["checkpoints"][0]["path"] == str(dest / REVISION)
    assert {f["name"]: f["status"] for f in result["files"]} == dict.fromkeys(FILES, "downloaded")
    got = files_under(dest / REVISION)
    assert TOKEN not in got.pop(MARKER).decode() and got == FILES
    assert checkpoint_kind(dest / REVISION) == "hf"  # what convert-hf --from-hf, generate and eval take
    proc = run_cli(*base, tmp=tmp_path, env=env)
    assert proc.returncode == 0 and "already downloaded" in proc.stdout

    # any repository by name, at main by default
    serve_repo(server, {"config.json": b"{}"}, repo="someone/tiny-olmo", revision="main")
    proc = run_cli(
        "download",
        "--source",
        "hf",
        "--repo",
        "someone/tiny-olmo",
        "-o",
        str(dest),
        "-q",
        tmp=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (dest / "main" / "config.json").read_bytes() == b"{}"


def test_cli_usage_errors_of_the_hf_source(server: Server, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": server.base_url}
    cases = [
        (["--source", "hf", "--model", "olmo2-7b", "--step", "5"], "--source hf downloads one revision"),
        (["--source", "hf", "--model", "olmo2-7b", "--repo", "a/b"], "not both"),
        (["--model", "olmo2-7b", "--revision", "main"], "--repo and --revision are for --source hf"),
        (["--source", "hf", "--repo", "../x"], "not a Hugging Face repository name"),
        (["--source", "hf"], "which model's checkpoints"),
    ]
    for args, message in cases:
        proc = run_cli("download", *args, "-o", str(tmp_path / "d"), tmp=tmp_path, env=env)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    proc = run_cli(
        "download", "--source", "hf", "--repo", "a/b", "-o", str(tmp_path / "d"), tmp=tmp_path, env=env
    )
    assert proc.returncode == 5 and "a/b has no revision 'main'" in proc.stderr
    assert not (tmp_path / "d").exists()
