"""`olmo checkpoints list|download` as a user runs them, against the test server: kill -9 and re-run,
exit codes, --dry-run, --quiet, and where the model comes from."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests._http_server import Server
from tests.cli._helpers import ROOT, olmo_executable

from ._helpers import UPSTREAM_FILES, add_checkpoint, add_index, cli_env, files_under, run_cli

TOTAL = sum(UPSTREAM_FILES.values())


def test_kill_9_then_rerun_completes_without_refetching_finished_bytes(
    server: Server, tmp_path: Path
) -> None:
    files = add_checkpoint(server, 1000)
    index = add_index(server, [1000])
    dest = tmp_path / "dest"
    args = [
        "download",
        "--index",
        index,
        "--step",
        "1000",
        "-o",
        str(dest),
        "--chunk-size",
        "256K",
        "-j",
        "4",
    ]
    server.rate = 1.5e6  # bytes/s per connection: the download takes a couple of seconds
    proc = subprocess.Popen(
        [olmo_executable(), "checkpoints", *args, "--quiet"],
        cwd=ROOT,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while server.served(prefix="ckpt/") < 0.4 * TOTAL and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    server.wait_idle()
    first_run = server.served(prefix="ckpt/")
    assert not (dest / "step1000-unsharded").exists()  # never a final name for an incomplete checkpoint

    plan = json.loads(run_cli(*args, "--dry-run", "--json", tmp=tmp_path).stdout)[0]
    on_disk = {f["name"]: f["on_disk"] for f in plan["files"]}
    assert 0 < sum(on_disk.values()) < TOTAL and sum(on_disk.values()) <= first_run
    assert any(0 < on_disk[name] < size for name, size in UPSTREAM_FILES.items())  # a file cut mid-way
    assert plan["to_fetch"] == TOTAL - sum(on_disk.values())

    server.rate = None
    server.reset_log()
    done = run_cli(*args, "--json", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert server.served(prefix="ckpt/") == TOTAL - sum(on_disk.values())
    result = json.loads(done.stdout)
    assert {f["name"]: f["fetched"] for f in result["files"]} == {
        name: size - on_disk[name] for name, size in UPSTREAM_FILES.items()
    }
    got = files_under(dest / "step1000-unsharded")
    got.pop(".olmo-download.json")
    assert got == files


def test_a_step_not_in_the_index_exits_2_naming_the_nearest(server: Server, tmp_path: Path) -> None:
    index = add_index(server, [0, 1000, 2000, 3000, 5000, 8000, 13000, 21000])
    proc = run_cli("download", "--index", index, "--step", "4000", "-o", str(tmp_path / "d"), tmp=tmp_path)
    assert proc.returncode == 2
    assert "step 4000 is not in the checkpoint index" in proc.stderr
    assert "nearest available steps: 0, 1000, 2000, 3000, 5000, 8000" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_a_404_fails_fast_with_the_url(server: Server, tmp_path: Path) -> None:
    index = add_index(server, [1000, 2000])
    add_checkpoint(server, 1000)
    started = time.monotonic()
    proc = run_cli("download", "--index", index, "--step", "2000", "-o", str(tmp_path / "d"), tmp=tmp_path)
    assert proc.returncode == 5 and time.monotonic() - started < 10
    assert server.url("ckpt/step2000-unsharded/") in proc.stderr and "hint:" in proc.stderr


def test_dry_run_lists_files_and_sizes_and_writes_nothing(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    index = add_index(server, [1000])
    proc = run_cli(
        "download", "--index", index, "--latest", "-o", str(tmp_path / "d"), "--dry-run", tmp=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for name in UPSTREAM_FILES:
        assert name in proc.stdout
    assert "5.0 MiB" in proc.stdout and "8.0 MiB to fetch" in proc.stdout
    assert server.served(prefix="ckpt/") == 0 and not (tmp_path / "d").exists()


def test_quiet_download_prints_nothing(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    index = add_index(server, [1000])
    proc = run_cli(
        "download", "--index", index, "--step", "1000", "-o", str(tmp_path / "d"), "-q", tmp=tmp_path
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert (tmp_path / "d" / "step1000-unsharded" / "model.safetensors").is_file()


def test_the_model_comes_from_preset_or_run_and_a_missing_one_lists_the_choices(
    server: Server, tmp_path: Path
) -> None:
    index = add_index(server, [0, 1000])
    listed = run_cli("list", "--preset", "1b", "--index", index, "--json", tmp=tmp_path)
    assert json.loads(listed.stdout)[1] == {
        "step": 1000,
        "tokens": 1000 * 2048 * 2048,  # the 1b preset's batch in tokens
        "url": server.url("ckpt/step1000-unsharded/"),
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run_name: OLMo-7B-0724\n")
    listed = run_cli("list", "--run", str(run), "--index", index, "--json", tmp=tmp_path)
    assert json.loads(listed.stdout)[1]["tokens"] == 1000 * 1024 * 4096

    for args in (["list"], ["list", "--preset", "tiny"], ["download", "--latest"]):
        proc = run_cli(*args, tmp=tmp_path)
        assert proc.returncode == 2, args
        assert (
            "1b, 7b, 7b-twin-2t, 7b-0424, 7b-0724, olmo2-1b, olmo2-7b, olmo2-13b, olmo2-32b" in proc.stderr
        ), args


def test_hf_revisions_are_listed_from_the_hub_api(server: Server, tmp_path: Path) -> None:
    refs = {
        "branches": [
            {"name": "main", "ref": "refs/heads/main", "targetCommit": "a" * 40},
            {
                "name": "step20000-tokens84B",
                "ref": "refs/heads/step20000-tokens84B",
                "targetCommit": "b" * 40,
            },
            {"name": "step1000-tokens4B", "ref": "refs/heads/step1000-tokens4B", "targetCommit": "c" * 40},
        ],
        "tags": [],
    }
    server.add_bytes("api/models/allenai/OLMo-1B/refs", json.dumps(refs).encode())
    env = {**cli_env(tmp_path), "HF_ENDPOINT": server.base_url}
    proc = subprocess.run(
        [olmo_executable(), "checkpoints", "list", "-m", "1b", "--source", "hf", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [(r["revision"], r["step"], r["tokens"]) for r in json.loads(proc.stdout)] == [
        ("step1000-tokens4B", 1000, 4 * 10**9),
        ("step20000-tokens84B", 20000, 84 * 10**9),
        ("main", None, None),
    ]
    proc = subprocess.run(
        [olmo_executable(), "checkpoints", "list", "-m", "7b", "--source", "hf"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 5 and "allenai/OLMo-7B not found" in proc.stderr
