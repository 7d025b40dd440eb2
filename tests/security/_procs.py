"""`olmo` jobs as real background processes for the process tests: a tiny CPU training, every process of
a job found by a marker in its environment, and waits that always end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests._fixtures import SMALL_ARGS
from tests.cli._helpers import clean_env, olmo_executable
from tests.train._runs import SEQ, pattern_tokens, write_token_dir

MARKER_ENV = "OLMO_TEST_PROCESS_MARKER"

# A model of a few thousand parameters on the CPU; batches split over 2 ranks.
TINY = [
    *SMALL_ARGS,
    *("--set", "global_train_batch_size=4", "--set", "device_train_microbatch_size=1", "--device", "cpu"),
]
# Trains until stopped, saving every few steps.
ENDLESS = ["--set", "max_duration=1000000", "--set", "stop_at=null", "--set", "save_interval=3"]


def token_data(directory: Path, vocab: int = 60) -> Path:
    return write_token_dir(directory, pattern_tokens(64 * SEQ, seed=5, vocab=vocab))


def job_env(tmp_path: Path, marker: str | None = None) -> dict[str, str]:
    """The environment of a job: no torchrun variables of ours, a private cache, and `marker` (inherited
    by everything the job starts, which is how its processes are found)."""
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if marker is not None:
        env[MARKER_ENV] = marker
    return env


def new_marker() -> str:
    return uuid.uuid4().hex


def start(args: list[str], tmp_path: Path, marker: str | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [olmo_executable(), *args],
        cwd=tmp_path,
        env=job_env(tmp_path, marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(args: list[str], tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [olmo_executable(), *args],
        cwd=tmp_path,
        env=job_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    """The output of `proc` once it has exited (killed after `timeout`)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Polls `condition` until it holds; fails after `timeout` s, or as soon as `proc` has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def marked_pids(marker: str) -> list[int]:
    """Live processes (zombies excluded) whose environment holds `marker`."""
    found = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state != "Z":
            found.append(int(entry.name))
    return found


def survivors(marker: str, within: float) -> list[str]:
    """The processes of a job still alive `within` seconds from now (as "PID: command"), polled so that
    an empty answer comes as soon as the last one has gone."""
    deadline = time.monotonic() + within
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{pid}: {command_line(pid)[:160]}" for pid in marked_pids(marker)]


def kill_marked(marker: str) -> None:
    """SIGKILLs whatever of a job is still alive, so a failing test leaves no process behind."""
    for pid in marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def checkpoints(run_dir: Path) -> list[str]:
    if not run_dir.is_dir():
        return []
    names = [p.name for p in run_dir.iterdir() if re.fullmatch(r"step\d+(-unsharded)?", p.name)]
    return sorted(names, key=step_of)


def step_of(name: str) -> int:
    return int(name.removeprefix("step").removesuffix("-unsharded"))
