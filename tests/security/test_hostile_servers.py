"""Downloads against a server that lies, stalls or redirects: a byte-identical file or one clear error,
in bounded time, and nothing written outside the destination.

The server (`tests/_http_server.py`) is real HTTP on 127.0.0.1; each test chooses how it misbehaves.
The engine is driven in-process with small limits where time is the point (trickle, silence), and the
installed `olmo checkpoints download` runs in a subprocess where the exit code and the one-line message are.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from olmo_cli.errors import CheckpointError, ConfigError, NetworkError
from olmo_cli.hub.download import MARKER, DownloadOptions, download, plan_download
from olmo_cli.hub.http import RetryPolicy, check_redirect
from olmo_cli.hub.index import IndexEntry
from tests._http_server import Request, Server, serve
from tests.cli._helpers import ROOT, clean_env, olmo_executable
from tests.security._full_disk import tmpfs_unavailable

STEP = 1000
DIR = f"ckpt/step{STEP}-unsharded"
MODEL = f"{DIR}/model.safetensors"
CONFIG = f"{DIR}/config.yaml"
MODEL_SIZE = 3 * (1 << 20) + 17
# Failures in milliseconds; the throughput floor off unless a test sets one.
QUICK = RetryPolicy(
    attempts=3, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2.0, read_timeout_s=2.0, min_rate=0.0
)


def options(policy: RetryPolicy = QUICK) -> DownloadOptions:
    return DownloadOptions(jobs=2, chunk_size=8 << 20, policy=policy)


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        rng = random.Random(7)
        s.files[MODEL] = rng.randbytes(MODEL_SIZE)
        s.files[CONFIG] = b"run_name: hostile\n"
        yield s


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of everything under `root` but `skip`: to prove nothing else was written."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in root.rglob("*")
        if p != skip and skip not in p.parents
    }


def engine(server: Server, dest: Path, opts: DownloadOptions | None = None) -> None:
    opts = opts or options()
    plans = plan_download([IndexEntry(STEP, server.url(DIR + "/"), 2)], dest, opts)
    download(plans, opts)


def assert_downloaded(dest: Path, server: Server) -> None:
    final = dest / f"step{STEP}-unsharded"
    assert (final / MARKER).is_file()
    assert (final / "model.safetensors").read_bytes() == server.files[MODEL]
    assert (final / "config.yaml").read_bytes() == server.files[CONFIG]


def assert_not_committed(dest: Path) -> None:
    assert not (dest / f"step{STEP}-unsharded").exists()
    partial = dest / f"step{STEP}-unsharded.partial"
    assert not (partial / "model.safetensors").exists()


def index_file(tmp: Path, server: Server) -> Path:
    path = tmp / "index.csv"
    path.write_text(f"Step,Checkpoint Directory\n{STEP},{server.url(DIR + '/')}\n")
    return path


def cli(
    tmp: Path, *args: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [olmo_executable(), "checkpoints", "download", "--quiet", *args],
        cwd=ROOT,
        env=clean_env(XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="200", HF_TOKEN="", **(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=90,
    )
    return proc, time.monotonic() - start


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The process failed with `code` and said so in one `error:` line, without a traceback."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------------
# sizes and versions: the GET must agree with the plan


def lie_in_head(size: int) -> Callable[[Request], None]:
    def answer(request: Request) -> None:
        if not request.head:
            return request.honest()
        _, _, _, headers = request.plan()
        request.send(200, {**headers, "Content-Length": str(size)})

    return answer


@pytest.mark.parametrize("delta", [-1000, +1000], ids=["under-reports", "over-reports"])
def test_a_head_that_misreports_the_size_is_a_clear_error_not_a_wrong_file(
    server: Server, tmp_path: Path, delta: int
) -> None:
    server.behave[MODEL] = lie_in_head(MODEL_SIZE + delta)
    dest, index = tmp_path / "dest", index_file(tmp_path, server)
    before = snapshot(tmp_path, dest)
    proc, elapsed = cli(tmp_path, "--index", str(index), "--step", str(STEP), "--dest", str(dest))
    line = one_error(proc, 5)
    assert "model.safetensors" in line and str(MODEL_SIZE + delta) in line and str(MODEL_SIZE) in line
    assert elapsed < 30
    assert len(server.seen(MODEL, "HEAD")) == 2  # planned, then asked once more
    assert_not_committed(dest)
    assert snapshot(tmp_path, dest) == before


def test_a_head_that_under_reports_and_a_get_without_length_is_caught(server: Server, tmp_path: Path) -> None:
    """No Content-Length to compare: the body going on past the planned size is the disagreement."""

    def answer(request: Request) -> None:
        if request.head:
            return lie_in_head(MODEL_SIZE - 1000)(request)
        _, _, _, headers = request.plan()
        del headers["Content-Length"]
        request.send(200, {**headers, "Connection": "close"}, server.files[MODEL])
        request.close()

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    start = time.monotonic()
    with pytest.raises(NetworkError, match=f"announced {MODEL_SIZE - 1000} bytes.*sends more"):
        engine(server, dest)
    assert time.monotonic() - start < 20
    assert_not_committed(dest)


def test_a_get_whose_length_disagrees_with_the_head_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    def answer(request: Request) -> None:
        if request.head:
            return request.honest()
        _, _, _, headers = request.plan()
        request.send(200, {**headers, "Content-Length": str(MODEL_SIZE + 5)}, server.files[MODEL])
        request.close()

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    with pytest.raises(NetworkError, match=f"announced {MODEL_SIZE} bytes .HEAD. but sends {MODEL_SIZE + 5}"):
        engine(server, dest)
    assert len(server.seen(MODEL, "GET")) == 2  # once per plan: never retried as if it were a glitch
    assert_not_committed(dest)


def test_a_range_answer_of_a_file_of_another_size_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    def answer(request: Request) -> None:
        status, start, end, headers = request.plan()
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{MODEL_SIZE * 2}"
        request.send(status, headers, b"" if request.head else server.files[MODEL][start:end])

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    small_chunks = DownloadOptions(jobs=2, chunk_size=1 << 20, policy=QUICK)
    with pytest.raises(NetworkError, match=f"announced {MODEL_SIZE} bytes .* says {MODEL_SIZE * 2}"):
        engine(server, dest, small_chunks)
    assert_not_committed(dest)


@pytest.mark.parametrize("server_kind", ["honours If-Range", "ignores If-Range"])
def test_a_file_that_changes_before_a_ranged_resume_ends_as_the_new_file(
    server: Server, tmp_path: Path, server_kind: str
) -> None:
    old_etag = server.etag(MODEL)
    new = random.Random(8).randbytes(MODEL_SIZE)
    gets = []

    def answer(request: Request) -> None:
        if request.head:
            return request.honest()
        gets.append(request.headers)
        if len(gets) == 1:  # part of the old file, then the connection breaks and the file changes
            status, _, _, headers = request.plan()
            request.send_headers(status, headers)
            request.write(server.files[MODEL][:1_000_000])
            server.replace(MODEL, new)
            return request.close(reset=True)
        if server_kind == "ignores If-Range" and "Range" in request.headers:
            # A 206 of the new file for the old one's range: only its ETag tells them apart.
            start = int(request.headers["Range"][6:].split("-")[0])
            headers = {
                "ETag": server.etag(MODEL),
                "Content-Range": f"bytes {start}-{MODEL_SIZE - 1}/{MODEL_SIZE}",
                "Content-Length": str(MODEL_SIZE - start),
            }
            return request.send(206, headers, new[start:])
        request.honest()

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    engine(server, dest)
    assert_downloaded(dest, server)
    assert server.files[MODEL] == new
    resumed = gets[1]
    assert resumed["Range"].startswith("bytes=") and not resumed["Range"].startswith("bytes=0-")
    assert resumed["If-Range"] == old_etag


def test_without_an_etag_last_modified_is_the_version(server: Server, tmp_path: Path) -> None:
    new = random.Random(9).randbytes(MODEL_SIZE)
    stamps = ["Mon, 01 Jan 2024 00:00:00 GMT"]
    gets = []

    def answer(request: Request) -> None:
        if not request.head:
            gets.append(dict(request.headers))
            request.headers.pop("If-Range", None)  # ranges taken whatever If-Range says
        status, start, end, headers = request.plan()
        del headers["ETag"]
        headers["Last-Modified"] = stamps[-1]
        if request.head:
            return request.send(status, headers)
        if len(gets) == 1:
            request.send_headers(status, headers)
            request.write(server.files[MODEL][:1_000_000])
            server.replace(MODEL, new)
            stamps.append("Tue, 02 Jan 2024 00:00:00 GMT")
            return request.close(reset=True)
        # A 206 of the new file for the old one's range: only Last-Modified tells the versions apart.
        request.send(status, headers, server.files[MODEL][start:end])

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    engine(server, dest)
    assert_downloaded(dest, server)
    assert gets[1]["If-Range"] == stamps[0]


# ---------------------------------------------------------------------------------------------------
# time: a trickle or silence cannot hold a download


def test_a_trickle_ends_within_the_throughput_window(server: Server, tmp_path: Path) -> None:
    server.behave[MODEL] = lambda request: request.honest() if request.head else request.trickle(1.0)
    policy = RetryPolicy(
        attempts=2, backoff_s=0.01, max_backoff_s=0.05, read_timeout_s=5.0, min_rate=100.0, rate_window_s=1.5
    )
    dest = tmp_path / "dest"
    before = snapshot(tmp_path, dest)
    start = time.monotonic()
    with pytest.raises(NetworkError, match="too slow"):
        engine(server, dest, options(policy))
    elapsed = time.monotonic() - start
    assert elapsed < 2 * 2 + 3, elapsed  # two tries, each ended by the first byte after its window
    assert len(server.seen(MODEL, "GET")) == 2
    assert_not_committed(dest)
    assert snapshot(tmp_path, dest) == before


def test_a_trickle_above_the_floor_ends_at_the_file_deadline(server: Server, tmp_path: Path) -> None:
    server.behave[MODEL] = lambda request: request.honest() if request.head else request.trickle(0.05)
    policy = RetryPolicy(attempts=50, backoff_s=0.01, read_timeout_s=5.0, min_rate=1.0, deadline_s=2.0)
    start = time.monotonic()
    with pytest.raises(NetworkError, match="not downloaded within 2s"):
        engine(server, tmp_path / "dest", options(policy))
    assert time.monotonic() - start < 2.0 + 2, time.monotonic() - start


def test_a_server_silent_after_its_headers_ends_at_the_deadline(server: Server, tmp_path: Path) -> None:
    server.behave[MODEL] = lambda request: request.honest() if request.head else request.silent()
    # Many tries allowed and a long read timeout: only the deadline can end it this early.
    policy = RetryPolicy(attempts=100, backoff_s=0.01, read_timeout_s=30.0, deadline_s=2.0)
    dest = tmp_path / "dest"
    start = time.monotonic()
    with pytest.raises(NetworkError, match="not downloaded within 2s"):
        engine(server, dest, options(policy))
    assert time.monotonic() - start < 2.0 + 2, time.monotonic() - start
    assert_not_committed(dest)


@pytest.mark.parametrize("kind", ["silent", "trickle"])
def test_tries_without_progress_end_after_the_grace_time(server: Server, tmp_path: Path, kind: str) -> None:
    """No deadline set and tries to spare: the time without progress alone ends it (by default 120 s)."""
    server.behave[MODEL] = lambda r: (
        r.honest() if r.head else r.silent() if kind == "silent" else r.trickle(0.2)
    )
    policy = RetryPolicy(
        attempts=1000,
        backoff_s=0.01,
        read_timeout_s=0.5,
        min_rate=100.0,
        rate_window_s=0.5,
        deadline_grace_s=2.5,
    )
    start = time.monotonic()
    with pytest.raises(NetworkError, match="without progress"):
        engine(server, tmp_path / "dest", options(policy))
    assert time.monotonic() - start < 2.5 + 2, time.monotonic() - start


def test_the_default_limits_bound_a_trickle_and_silence() -> None:
    """What a user gets without setting anything: no file waits forever on a server."""
    policy = RetryPolicy()
    assert 0 < policy.min_rate and 0 < policy.rate_window_s <= 60 and policy.read_timeout_s <= 60
    # silence: every try ends at the read timeout, and the deadline of a small file comes first
    assert policy.file_deadline(1000) <= 300 and policy.deadline_grace_s <= 180
    assert policy.file_deadline(10 << 30) == pytest.approx(
        policy.deadline_grace_s + (10 << 30) / policy.min_rate
    )


# ---------------------------------------------------------------------------------------------------
# failures that retrying cannot fix fail at once


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/model.safetensors", "gopher://x/"])
def test_a_redirect_to_another_scheme_fails_at_once(server: Server, tmp_path: Path, target: str) -> None:
    server.behave[MODEL] = lambda request: request.redirect(target)
    dest, index = tmp_path / "dest", index_file(tmp_path, server)
    before = snapshot(tmp_path, dest)
    proc, elapsed = cli(tmp_path, "--index", str(index), "--step", str(STEP), "--dest", str(dest))
    line = one_error(proc, 5)
    assert "refusing to follow a redirect" in line and target.split(":")[0] in line
    assert elapsed < 20
    assert len(server.seen(MODEL)) == 1
    assert not dest.exists() or not any(dest.rglob("*model*"))
    assert snapshot(tmp_path, dest) == before


def test_a_redirect_on_the_get_alone_fails_at_once(server: Server, tmp_path: Path) -> None:
    server.behave[MODEL] = lambda r: r.honest() if r.head else r.redirect("ftp://127.0.0.1/x")
    with pytest.raises(NetworkError, match="refusing to follow a redirect from http:// to ftp://"):
        engine(server, tmp_path / "dest")
    assert len(server.seen(MODEL, "GET")) == 1


def test_only_same_scheme_and_upgrading_redirects_are_followed() -> None:
    check_redirect("https://a/x", "https://cdn/y", "https://a/x")
    check_redirect("http://a/x", "https://a/x", "http://a/x")
    for source, target in [("https://a/x", "http://a/x"), ("http://a/x", "file:///etc/passwd")]:
        with pytest.raises(NetworkError, match="refusing to follow"):
            check_redirect(source, target, source)


@pytest.mark.parametrize("kind", ["loop", "endless chain"])
def test_redirect_loops_and_chains_fail_at_once(server: Server, tmp_path: Path, kind: str) -> None:
    hops = [f"hop/{i}" for i in range(40)]
    if kind == "loop":
        server.behave[MODEL] = lambda r: r.redirect("/hop/0")
        server.behave["hop/0"] = lambda r: r.redirect("/hop/1")
        server.behave["hop/1"] = lambda r: r.redirect("/" + MODEL)
    else:
        server.behave[MODEL] = lambda r: r.redirect("/hop/0")
        for i, hop in enumerate(hops[:-1]):
            server.behave[hop] = lambda r, nxt=hops[i + 1]: r.redirect("/" + nxt)
    start = time.monotonic()
    with pytest.raises(
        NetworkError, match="redirects in a loop" if kind == "loop" else "more than 10 redirects"
    ):
        engine(server, tmp_path / "dest")
    assert time.monotonic() - start < 10
    with server.lock:
        assert len(server.log) <= 2 + 12  # config.yaml's HEAD, and one HEAD of the model with its hops


@pytest.mark.parametrize("status", [400, 403, 404, 410, 451])
def test_a_4xx_on_the_get_fails_at_once(server: Server, tmp_path: Path, status: int) -> None:
    server.behave[MODEL] = lambda r: r.honest() if r.head else r.status(status)
    dest = tmp_path / "dest"
    proc, elapsed = cli(
        tmp_path, "--index", str(index_file(tmp_path, server)), "--step", str(STEP), "--dest", str(dest)
    )
    line = one_error(proc, 5)
    assert MODEL in line and str(status) in line
    assert elapsed < 20
    assert len(server.seen(MODEL, "GET")) == 1
    assert_not_committed(dest)


@pytest.mark.parametrize("status", [408, 429])
def test_408_and_429_are_retried(server: Server, tmp_path: Path, status: int) -> None:
    failures = [status, status]

    def answer(request: Request) -> None:
        if request.head or not failures:
            return request.honest()
        request.status(failures.pop())

    server.behave[MODEL] = answer
    dest = tmp_path / "dest"
    engine(server, dest)
    assert_downloaded(dest, server)
    assert len(server.seen(MODEL, "GET")) == 3


# ---------------------------------------------------------------------------------------------------
# the index


def test_an_index_with_an_oversized_field_is_one_clear_error(server: Server, tmp_path: Path) -> None:
    index = tmp_path / "index.csv"
    index.write_text(f"Step,Checkpoint Directory\n{STEP},{server.url(DIR)}/{'a' * 300_000}\n")
    proc, elapsed = cli(
        tmp_path, "--index", str(index), "--step", str(STEP), "--dest", str(tmp_path / "dest")
    )
    line = one_error(proc, 2)
    assert "line 2" in line and "131072 characters (the limit)" in line
    assert elapsed < 20 and not server.log and not (tmp_path / "dest").exists()


def test_an_index_over_http_with_an_oversized_field_is_one_clear_error(
    server: Server, tmp_path: Path
) -> None:
    server.files["index.csv"] = f'Step,Checkpoint Directory\n{STEP},"{"b" * 200_000}"\n'.encode()
    proc, _ = cli(
        tmp_path, "--index", server.url("index.csv"), "--step", str(STEP), "--dest", str(tmp_path / "d")
    )
    assert "131072 characters (the limit)" in one_error(proc, 2)
    assert server.seen("index.csv") and not server.seen(MODEL)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"Step,Checkpoint Directory\n1000,http://x/\xff\xfe\n", "line 2: not UTF-8"),
        (b"Step,Checkpoint Directory\n" + b"9" * 5000 + b",http://x/\n", "non-negative integer step"),
        (b"Step,Checkpoint Directory\n1000,http://x/" + b"c" * 9000 + b"\n", "longer than 8192 characters"),
        (b"Step,Checkpoint Directory\n" + b"1000,http://x/\n" * 1_200_000, "larger than 16 MiB"),
    ],
    ids=["not-utf8", "huge-step", "long-url", "huge-index"],
)
def test_bad_index_files_are_one_config_error(tmp_path: Path, body: bytes, problem: str) -> None:
    from olmo_cli.hub.index import load_index

    index = tmp_path / "index.csv"
    index.write_bytes(body)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_index(str(index))
    assert len(str(caught.value)) < 400  # the message names the problem, it does not echo the input


# ---------------------------------------------------------------------------------------------------
# the disk fills up


def full_disk_after(budget: int) -> Callable[..., int]:
    """os.pwrite that writes `budget` bytes of download data (`.part` files), then fails with ENOSPC."""
    real = os.pwrite
    left = [budget]

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.endswith(".part"):
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = memoryview(data)[: left[0]]
            left[0] -= len(data)
        return real(fd, data, offset)

    return pwrite


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the injection finds files through /proc")
def test_disk_full_names_the_space_needed_keeps_the_part_and_resumes(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "dest"
    before = snapshot(tmp_path, dest)
    monkeypatch.setattr(os, "pwrite", full_disk_after(1 << 20))
    one_at_a_time = DownloadOptions(jobs=1, chunk_size=8 << 20, policy=QUICK)  # config.yaml, then the model
    with pytest.raises(CheckpointError) as caught:
        engine(server, dest, one_at_a_time)
    message = str(caught.value)
    assert "disk full writing" in message and str(dest) in message and ".model.safetensors.part" in message
    still = int(message.split(" bytes) still to download")[0].rsplit("(", 1)[1])
    assert MODEL_SIZE - (1 << 20) <= still <= MODEL_SIZE
    assert "run the same command again" in message and ".partial" in message
    partial = dest / f"step{STEP}-unsharded.partial"
    assert not list(dest.rglob("*.tmp"))  # no temporary file left to keep the disk full
    assert (partial / ".model.safetensors.part").is_file()  # the resumable part, as the message says
    monkeypatch.undo()
    engine(server, dest)  # space freed: the same download completes
    assert_downloaded(dest, server)
    resumed = server.seen(MODEL, "GET")[-1].headers.get("Range", "")
    assert resumed.startswith("bytes=") and not resumed.startswith("bytes=0-")
    assert snapshot(tmp_path, dest) == before


SITECUSTOMIZE = """
import errno, os
_real, _left = os.pwrite, [int(os.environ["OLMO_TEST_DISK_BUDGET"])]
def _pwrite(fd, data, offset):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.endswith(".part"):
        if _left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = memoryview(data)[: _left[0]]
        _left[0] -= len(data)
    return _real(fd, data, offset)
os.pwrite = _pwrite
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the injection finds files through /proc")
def test_disk_full_through_the_cli_is_exit_4_and_a_rerun_completes(server: Server, tmp_path: Path) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    dest = tmp_path / "dest"
    args = ["--index", str(index_file(tmp_path, server)), "--step", str(STEP), "--dest", str(dest)]
    proc, elapsed = cli(
        tmp_path, *args, extra_env={"PYTHONPATH": str(inject), "OLMO_TEST_DISK_BUDGET": "500000"}
    )
    line = one_error(proc, 4)
    assert "disk full writing" in line and str(dest) in line and "still to download" in line
    assert "run the same command again" in proc.stderr
    assert elapsed < 30
    proc, _ = cli(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert_downloaded(dest, server)


def test_a_real_full_tmpfs_is_exit_4_and_the_rerun_completes_once_space_is_freed(
    server: Server, tmp_path: Path
) -> None:
    """A 1 MiB tmpfs (in a user and mount namespace of its own) as --dest; the HEAD gives no size, so
    the check before fetching cannot see it coming and the write itself meets ENOSPC."""
    dest = tmp_path / "dest"
    dest.mkdir()
    if tmpfs_unavailable() is not None:
        pytest.skip(
            "this machine cannot mount a tmpfs in a user namespace (the injected ENOSPC tests cover it)"
        )

    def answer(request: Request) -> None:
        if not request.head:
            return request.honest()
        _, _, _, headers = request.plan()
        del headers["Content-Length"]  # and the connection closes: no length at all
        request.send(200, headers)
        request.close()

    server.behave[MODEL] = answer
    expected = tmp_path / "expected.bin"
    expected.write_bytes(server.files[MODEL])
    index = index_file(tmp_path, server)
    olmo = f"{olmo_executable()} checkpoints download --quiet --index {index} --step {STEP} --dest {dest}"
    final = dest / f"step{STEP}-unsharded" / "model.safetensors"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {dest} || exit 99\n"
        f"{olmo} 2> {tmp_path / 'first.err'}; echo $? > {tmp_path / 'first.rc'}\n"
        f"mount -o remount,size=16m {dest}\n"
        f"{olmo} 2> {tmp_path / 'second.err'}; echo $? > {tmp_path / 'second.rc'}\n"
        f"cmp {final} {expected} && echo same > {tmp_path / 'cmp'}\n"
    )
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"), COLUMNS="200", HF_TOKEN="")
    start = time.monotonic()
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, cwd=ROOT, timeout=120, check=False)
    assert time.monotonic() - start < 90
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "4", first
    assert "Traceback" not in first
    errors = [line for line in first.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full writing" in errors[0] and str(dest) in errors[0], first
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    assert (tmp_path / "cmp").read_text().strip() == "same"
