"""The downloader against a real HTTP server on 127.0.0.1 that injects faults: every file must end
byte-identical to the server's, nothing may be fetched twice that was already on disk, and fatal
answers must stop the download at once."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from olmo_cli.errors import CheckpointError, NetworkError
from olmo_cli.hub.download import MARKER, DownloadOptions, download, plan_download
from olmo_cli.hub.events import CheckpointDone, FileDone, Retrying
from tests._http_server import Fault, Server

from ._helpers import FAST, OPTIONS, UPSTREAM_FILES, add_checkpoint, entry, fetch, files_under

MODEL = "ckpt/step1000-unsharded/model.safetensors"
OPTIM = "ckpt/step1000-unsharded/optim.safetensors"
TOTAL = sum(UPSTREAM_FILES.values())


def assert_identical(dest: Path, step: int, files: dict[str, bytes]) -> None:
    directory = dest / f"step{step}-unsharded"
    got = {name: data for name, data in files_under(directory).items() if name != MARKER}
    assert got.keys() == files.keys()
    for name, data in files.items():
        assert hashlib.sha256(got[name]).hexdigest() == hashlib.sha256(data).hexdigest(), name
    assert (directory / MARKER).is_file()
    assert not (dest / f"step{step}-unsharded.partial").exists()


def test_clean_download_fetches_each_byte_once(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    plans, events = fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, files)
    assert server.served() == TOTAL
    assert [e for e in events if isinstance(e, CheckpointDone)] == [CheckpointDone(1000, str(plans[0].final))]
    # large files really went in ranges, in parallel connections
    ranges = [e.range for e in server.log if e.path == OPTIM and e.method == "GET"]
    assert len(ranges) == 6 and all(r and r.startswith("bytes=") for r in ranges)
    manifest = json.loads((plans[0].final / MARKER).read_text())
    assert {f["name"]: f["size"] for f in manifest["files"]} == UPSTREAM_FILES


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("drop", after=300_000), Fault("drop", after=10)],
        [Fault("status", status=500), Fault("status", status=503), Fault("status", status=502)],
        [Fault("truncate", after=777_777), Fault("truncate", after=0)],
        [Fault("slow", delay=1.6)],
    ],
    ids=["dropped-mid-body", "5xx", "truncated-with-correct-length", "slow-beyond-read-timeout"],
)
def test_faults_are_retried_and_files_end_identical(
    server: Server, tmp_path: Path, faults: list[Fault]
) -> None:
    files = add_checkpoint(server, 1000)
    server.fault(MODEL, *faults)
    server.fault(OPTIM, *faults)
    server.fault("ckpt/step1000-unsharded/config.yaml", *faults)
    _, events = fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, files)
    retries = [e for e in events if isinstance(e, Retrying)]
    assert len(retries) >= 2 * len(faults)
    # bytes received before a drop are kept: at most the unfinished bytes are fetched again
    assert server.served() <= TOTAL + 2 * len(faults) * (1 << 20)


def test_a_head_that_times_out_is_retried(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    server.fault(MODEL, Fault("slow", delay=1.5, method="HEAD"))
    fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, files)


def test_corrupt_bytes_are_caught_by_the_offered_checksum_and_fetched_again(
    server: Server, tmp_path: Path
) -> None:
    files = add_checkpoint(server, 1000)
    server.extra_headers[MODEL] = {
        "x-checksum-sha256": hashlib.sha256(files["model.safetensors"]).hexdigest()
    }
    server.fault(MODEL, Fault("corrupt", after=12345))
    _, events = fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, files)
    done = {e.key[1]: e for e in events if isinstance(e, FileDone)}
    assert done["model.safetensors"].verified_by == "sha256 (x-checksum-sha256)"
    assert done["optim.safetensors"].verified_by == "size"
    assert any("downloaded file is wrong" in e.reason for e in events if isinstance(e, Retrying))


def test_a_checksum_that_never_matches_is_an_error(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    server.extra_headers[MODEL] = {"x-checksum-sha256": "0" * 64}
    with pytest.raises(CheckpointError, match="does not match"):
        fetch(server, [1000], tmp_path)
    assert not (tmp_path / "step1000-unsharded").exists()


@pytest.mark.parametrize("status", [404, 403])
def test_404_and_403_fail_fast_naming_the_url(server: Server, tmp_path: Path, status: int) -> None:
    add_checkpoint(server, 1000)
    server.fault(OPTIM, *[Fault("status", status=status)] * 10)  # GETs only: the HEAD said it exists
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        fetch(server, [1000], tmp_path)
    assert time.monotonic() - started < 2.0
    assert server.url(OPTIM) in info.value.message and f"HTTP {status}" in info.value.message
    assert info.value.hint
    failed_gets = [e for e in server.log if e.path == OPTIM and e.status == status]
    assert 1 <= len(failed_gets) <= OPTIONS.jobs  # no retries: one per chunk already in flight at most
    assert not (tmp_path / "step1000-unsharded").exists()


def test_a_directory_with_no_model_file_is_an_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="no checkpoint at"):
        fetch(server, [4242], tmp_path)


def test_pt_files_are_the_fallback_only(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(
        server, 1000, {"config.yaml": b"a: 1\n", "model.pt": b"m" * 5000, "train.pt": b"t"}
    )
    server.add_bytes("ckpt/step2000-unsharded/model.safetensors", b"s" * 100)
    server.add_bytes("ckpt/step2000-unsharded/model.pt", b"p" * 100)
    fetch(server, [1000, 2000], tmp_path)
    assert_identical(tmp_path, 1000, files)
    assert_identical(tmp_path, 2000, {"model.safetensors": b"s" * 100})


def test_a_server_without_ranges_still_works(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    server.ranges = False
    server.fault(MODEL, Fault("drop", after=1_000_000))
    fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, files)
    assert all(e.range is None for e in server.log if e.method == "GET" and e.path != MODEL)


def test_a_second_run_fetches_nothing_and_a_damaged_file_is_fetched_again(
    server: Server, tmp_path: Path
) -> None:
    files = add_checkpoint(server, 1000)
    fetch(server, [1000], tmp_path)
    server.reset_log()
    plans, _ = fetch(server, [1000], tmp_path)
    assert plans[0].complete and server.served() == 0
    with open(tmp_path / "step1000-unsharded" / "optim.safetensors", "r+b") as f:
        f.truncate(1000)  # wrong size: fetched again, the others are kept
    plans, _ = fetch(server, [1000], tmp_path)
    assert not plans[0].complete
    assert_identical(tmp_path, 1000, files)
    assert server.served() == UPSTREAM_FILES["optim.safetensors"]


def test_a_partial_download_continues_from_the_bytes_on_disk(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    # optim's first range breaks after 300000 bytes, and its retry is refused: with one connection,
    # the other files are complete by then
    server.fault(OPTIM, Fault("truncate", after=300_000), *[Fault("status", status=403)] * 10)
    with pytest.raises(NetworkError):
        fetch(server, [1000], tmp_path, DownloadOptions(jobs=1, chunk_size=1 << 20, policy=FAST))
    plan = plan_download([entry(server, 1000)], tmp_path, OPTIONS)[0]
    on_disk = sum(f.on_disk for f in plan.files)
    assert on_disk == TOTAL - UPSTREAM_FILES["optim.safetensors"] + 300_000
    server.faults.clear()
    server.reset_log()
    download([plan], OPTIONS)
    assert_identical(tmp_path, 1000, files)
    assert server.served() == TOTAL - on_disk


def test_a_file_that_changed_on_the_server_is_started_over(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    server.fault(OPTIM, *[Fault("status", status=403)] * 10)
    with pytest.raises(NetworkError):
        fetch(server, [1000], tmp_path)
    server.faults.clear()
    new = add_checkpoint(
        server, 1000, {**{k: b"x" * 10 for k in UPSTREAM_FILES}, "optim.safetensors": b"new" * 999}
    )
    fetch(server, [1000], tmp_path)
    assert_identical(tmp_path, 1000, new)


def test_an_existing_directory_that_is_not_ours_is_left_alone(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    mine = tmp_path / "step1000-unsharded"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="was not written by"):
        fetch(server, [1000], tmp_path)
    assert files_under(mine) == {"notes.txt": b"mine"}


def test_several_workers_and_one_connection_give_the_same_bytes(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    fetch(server, [1000], tmp_path / "one", DownloadOptions(jobs=1, chunk_size=1 << 19, policy=FAST))
    fetch(server, [1000], tmp_path / "many", DownloadOptions(jobs=16, chunk_size=1 << 16, policy=FAST))
    assert_identical(tmp_path / "one", 1000, files)
    assert_identical(tmp_path / "many", 1000, files)


def test_too_little_disk_space_fails_before_fetching(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    add_checkpoint(server, 1000)
    plans = plan_download([entry(server, 1000)], tmp_path, OPTIONS)
    almost = shutil._ntuple_diskusage(10**12, 10**12, TOTAL - 1)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost)
    with pytest.raises(CheckpointError, match="not enough disk space"):
        download(plans, OPTIONS)
    assert server.served() == 0
