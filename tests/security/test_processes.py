"""Jobs that meet each other or die badly: one job per directory, no orphans, one error per job.

- A second training (or resume, or tokenize) into a directory in use is refused at once, exit 2, naming
  the holder (PID, host, command, start time); a lock file left by a dead process is taken over; a
  hostile lock file (a symlink out of the directory, escape codes in its text) changes nothing outside
  and shows nothing raw.
- `kill -9` of `olmo train --nproc-per-node 2` leaves no launcher or worker process behind within
  seconds, and `olmo resume` then continues in the same folder.
- A user error under `--nproc-per-node 2` is one message with the single-process exit code, no
  torchrun report; SIGTERM stops 1 and 2 processes alike with exit 75 after saving a checkpoint.

Every job is a real `olmo` process; every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from olmo_cli.dirlock import LOCK_NAME
from olmo_cli.train.signals import STOPPED_EXIT_CODE
from tests.security._procs import (
    ENDLESS,
    TINY,
    checkpoints,
    command_line,
    finish,
    kill_marked,
    marked_pids,
    new_marker,
    run,
    start,
    step_of,
    survivors,
    token_data,
    wait_for,
)

REFUSED_WITHIN_S = 30  # a refused job costs its start-up (python, typer, torch) and nothing more


def _one_error(stderr: str, code: int, returncode: int) -> str:
    assert returncode == code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for noise in ("Traceback", "ChildFailedError", "torch.distributed.elastic", "torch/distributed"):
        assert noise not in stderr, stderr
    return errors[0]


def _hold_lock(directory: Path) -> subprocess.Popen[str]:
    """Another process holding `directory`'s lock until its stdin closes."""
    code = (
        "import sys\n"
        "from olmo_cli.dirlock import lock_directory\n"
        f"lock = lock_directory({str(directory)!r}, busy_hint='-', command='holder-of-the-test')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "lock.release()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _release(holder: subprocess.Popen[str]) -> None:
    if holder.stdin:
        holder.stdin.close()
    holder.wait(timeout=30)


# ---- one job per directory -----------------------------------------------------------------------------


def test_a_second_training_into_a_busy_folder_is_refused_at_once_and_sigterm_exits_75(tmp_path):
    data, run_dir = token_data(tmp_path / "data"), tmp_path / "run"
    first = start(["train", *TINY, *ENDLESS, "--data", str(data), "-o", str(run_dir)], tmp_path)
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), 180, "the first run's first step", first)
        config = (run_dir / "config.yaml").read_bytes()
        began = time.monotonic()
        second = run(["train", *TINY, "--data", str(data), "-o", str(run_dir)], tmp_path)
        took = time.monotonic() - began
        resumed = run(["resume", str(run_dir)], tmp_path)
        assert (run_dir / "config.yaml").read_bytes() == config  # the refused jobs wrote nothing
        assert first.poll() is None  # and disturbed nothing
        first.send_signal(signal.SIGTERM)
        out, err = finish(first)
    finally:
        if first.poll() is None:
            first.kill()
    line = _one_error(second.stderr, 2, second.returncode)
    assert "in use by another olmo job" in line and f"PID {first.pid} on host {socket.gethostname()}" in line
    assert "olmo train --preset tiny" in line and " since " in line
    assert took < REFUSED_WITHIN_S
    assert f"PID {first.pid}" in _one_error(resumed.stderr, 2, resumed.returncode)
    # SIGTERM: a checkpoint of the last step, then the documented code, not 0.
    assert first.returncode == STOPPED_EXIT_CODE, err
    assert "stopped by a signal" in out and f"exit code {STOPPED_EXIT_CODE}" in out
    last = checkpoints(run_dir)[-1]
    assert last.endswith("-unsharded") and f"checkpoint: {run_dir / last}" in out
    assert not (run_dir / LOCK_NAME).exists()  # given up on the way out


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    data, run_dir = token_data(tmp_path / "data"), tmp_path / "run"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(
        f"pid: {gone.pid}\nhost: {socket.gethostname()}\nsince: 1700000000\ncommand: olmo train (killed)\n"
    )
    proc = run(
        ["train", *TINY, "--data", str(data), "-o", str(run_dir), "--set", "max_duration=2"]
        + ["--set", "stop_at=2", "--set", "save_interval=1"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock of a job that has ended" in proc.stdout and f"PID {gone.pid}" in proc.stdout
    # The lock file in a fresh folder is not "another run", and not a checkpoint either.
    assert checkpoints(run_dir) == ["step1-unsharded", "step2-unsharded"]
    assert not (run_dir / LOCK_NAME).exists()


def test_a_busy_tokenize_output_is_refused_naming_the_holder(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "hello world"}\n' * 20)
    output = tmp_path / "tok"
    holder = _hold_lock(output)
    try:
        busy = run(
            ["data", "tokenize", str(docs), "-t", "builtin:tiny-bpe-4096", "-o", str(output)], tmp_path
        )
    finally:
        _release(holder)
    line = _one_error(busy.stderr, 2, busy.returncode)
    assert f"PID {holder.pid}" in line and "holder-of-the-test" in line
    assert not output.exists()  # made and removed by the holder: the refused job wrote nothing there
    done = run(["data", "tokenize", str(docs), "-t", "builtin:tiny-bpe-4096", "-o", str(output)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (output / "manifest.json").is_file() and not (output / LOCK_NAME).exists()


def test_hostile_lock_files_change_nothing_outside_and_show_nothing_raw(tmp_path):
    data, run_dir = token_data(tmp_path / "data"), tmp_path / "run"
    args = ["train", *TINY, "--data", str(data), "-o", str(run_dir), "--set", "stop_at=1"]
    # A symlink named like the lock file, pointing at a file outside: never written through.
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    run_dir.mkdir()
    (run_dir / LOCK_NAME).symlink_to(outside)
    linked = run(args, tmp_path)
    assert "is a symbolic link" in _one_error(linked.stderr, 2, linked.returncode)
    assert outside.read_text() == "keep me\n" and (run_dir / LOCK_NAME).is_symlink()
    (run_dir / LOCK_NAME).unlink()
    # A held lock whose text was replaced with terminal escapes, newlines and a megabyte of noise.
    holder = _hold_lock(run_dir)
    try:
        hostile = b"pid: 1\x1b[2J\x1b]0;owned\x07\nhost: \x00evil\r\ncommand: " + b"\xff" * (1 << 20) + b"\n"
        (run_dir / LOCK_NAME).write_bytes(hostile)
        busy = run(args, tmp_path)
    finally:
        _release(holder)
    # No PID that parses (the escapes are part of it), the host's NUL replaced, the command cut short.
    line = _one_error(busy.stderr, 2, busy.returncode)
    assert "in use by another olmo job: a process on host ?evil (" in line and len(line) < 400
    assert "\x1b" not in busy.stderr and "\x00" not in busy.stderr and "\x07" not in busy.stderr
    assert len(busy.stderr) < 4000


# ---- several processes ---------------------------------------------------------------------------------


def _nproc2(*args: str) -> list[str]:
    return [*args, *TINY, "--nproc-per-node", "2"]


def _processes(marker: str) -> str:
    return "\n".join(f"{pid}: {command_line(pid)[:160]}" for pid in marked_pids(marker))


@pytest.mark.slow
def test_kill_9_of_a_two_process_run_leaves_no_process_and_resume_continues(tmp_path):
    data, run_dir = token_data(tmp_path / "data"), tmp_path / "run"
    marker = new_marker()
    parent = start(_nproc2("train", *ENDLESS, "--data", str(data), "-o", str(run_dir)), tmp_path, marker)
    try:
        second_marker = new_marker()
        wait_for(lambda: len(checkpoints(run_dir)) >= 1, 240, "a first sharded checkpoint", parent)
        assert len(marked_pids(marker)) == 4, _processes(marker)  # olmo, the launcher, 2 workers
        # A second 2-process job is refused by its parent, before it starts any process.
        second = start(_nproc2("train", "--data", str(data), "-o", str(run_dir)), tmp_path, second_marker)
        _, second_err = finish(second, timeout=REFUSED_WITHIN_S)
        assert f"PID {parent.pid}" in _one_error(second_err, 2, second.returncode)
        assert marked_pids(second_marker) == []

        parent.kill()
        parent.wait(timeout=10)
        left = survivors(marker, within=10)  # the launcher and the workers die with their parent
    finally:
        if parent.poll() is None:
            parent.kill()
        finish(parent, timeout=30)
        kill_marked(marker)
        kill_marked(second_marker)
    assert left == []
    assert (run_dir / LOCK_NAME).is_file()  # left behind by kill -9, taken over by the resume
    resume_at = step_of(checkpoints(run_dir)[-1]) + 1
    resumed = run(["resume", str(run_dir), "--device", "cpu", "--set", f"stop_at={resume_at}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"finished at step {resume_at}" in resumed.stdout and "took over the lock" in resumed.stdout
    assert checkpoints(run_dir)[-1] == f"step{resume_at}-unsharded"


@pytest.mark.slow
def test_a_user_error_under_two_processes_is_one_message_with_the_single_process_code(tmp_path):
    # Token ids up to 199 for a 60-id vocabulary: found on rank 0 while preparing the data (exit 3).
    data = token_data(tmp_path / "data", vocab=200)
    args = ["train", "--data", str(data), "-o", str(tmp_path / "run")]
    one = run([*args, *TINY], tmp_path)
    two = run(_nproc2(*args), tmp_path)
    single = _one_error(one.stderr, 3, one.returncode)
    assert _one_error(two.stderr, 3, two.returncode) == single
    assert two.stderr.count("hint:") == 1 and "OMP_NUM_THREADS" not in two.stderr


@pytest.mark.slow
def test_sigterm_stops_a_two_process_run_with_exit_75_after_a_checkpoint(tmp_path):
    data, run_dir = token_data(tmp_path / "data"), tmp_path / "run"
    marker = new_marker()
    args = _nproc2("train", *ENDLESS, "--set", "save_interval=1000", "--data", str(data), "-o", str(run_dir))
    parent = start(args, tmp_path, marker)
    try:
        wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), 240, "the first step", parent)
        parent.send_signal(signal.SIGTERM)
        out, err = finish(parent, timeout=90)
    finally:
        if parent.poll() is None:
            parent.kill()
        left = survivors(marker, within=10)
        kill_marked(marker)
    assert left == []
    assert parent.returncode == STOPPED_EXIT_CODE, err
    assert "Traceback" not in err and "ChildFailedError" not in err
    assert "stopped by a signal" in out
    saved = checkpoints(run_dir)
    assert len(saved) == 1 and not saved[0].endswith("-unsharded")  # the sharded save at the stop
    assert (run_dir / "latest").resolve().name == saved[0]


def test_report_folders_of_killed_parents_are_removed_by_the_next_launch(tmp_path, monkeypatch):
    """kill -9 of `olmo` leaves its workers' report folder in the temp directory; the next launch
    removes the folders of parents that no longer run, and only those."""
    import tempfile

    from olmo_cli.train import launch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"olmo-ranks-{dead.pid}-abc"
    live = tmp_path / f"olmo-ranks-{os.getpid()}-def"
    other = tmp_path / "olmo-ranks-notapid-x"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "rank0.json").write_text("{}")
    launch._remove_stale_reports()
    assert not stale.exists() and live.is_dir() and other.is_dir()
