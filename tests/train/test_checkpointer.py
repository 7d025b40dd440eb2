"""Checkpoints during training: cadence per kind, keep-last-N, the `latest` pointers, and atomicity: a
save killed with SIGKILL leaves the previous checkpoint loadable and nothing partial under a final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.train.events import CheckpointSaved, StepDone
from olmo_cli.train.run import RunOptions, run
from olmo_cli.train.signals import StopRequest, stop_on_signals
from tests.train._runs import losses, metrics, quiet_run, run_config

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint_dirs(run_dir: Path) -> list[str]:
    return sorted((p.name for p in run_dir.iterdir() if p.name.startswith("step")), key=lambda n: (len(n), n))


def test_intervals_retention_and_latest_pointer(tmp_path):
    cfg = run_config(
        tmp_path,
        max_duration=7,
        stop_at=7,
        save_interval=2,
        save_num_checkpoints_to_keep=2,
        save_interval_unsharded=3,
        save_num_unsharded_checkpoints_to_keep=1,
    )
    result, events = quiet_run(cfg)
    run_dir = tmp_path / "run"
    # Regular at 2, 4, 6 (keep 2); unsharded at 3, 6 (keep 1); the final one at 7 is unsharded because
    # save_interval_unsharded is set. With one process every checkpoint is an unsharded directory, and
    # step 6 serves both kinds: it stays while the regular list holds it.
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [2, 3, 4, 6, 7]
    assert _checkpoint_dirs(run_dir) == ["step4-unsharded", "step6-unsharded", "step7-unsharded"]
    assert os.readlink(run_dir / "latest-unsharded") == "step7-unsharded"
    assert not (run_dir / "latest").exists()  # no sharded checkpoint in a one-process run
    assert result.checkpoint == run_dir / "step7-unsharded"
    trainer = read_unsharded(run_dir / "step7-unsharded").trainer
    assert [p.name for p in trainer["checkpoints"]] == ["step4-unsharded", "step6-unsharded"]
    assert [p.name for p in trainer["unsharded_checkpoints"]] == ["step7-unsharded"]
    assert trainer["global_step"] == 7 and trainer["global_train_tokens_seen"] == 7 * 8 * 16


def test_ephemeral_checkpoints_keep_one_and_go_with_a_regular_save(tmp_path):
    cfg = run_config(tmp_path, stop_at=6, save_interval=4, save_interval_ephemeral=1)
    quiet_run(cfg)
    assert _checkpoint_dirs(tmp_path / "run") == ["step4-unsharded", "step6-unsharded"]


def test_keep_zero_never_saves_that_kind(tmp_path):
    # No regular checkpoints; the final one falls back to the kind that is allowed.
    cfg = run_config(tmp_path / "a", stop_at=4, save_interval=2, save_num_checkpoints_to_keep=0)
    result, _ = quiet_run(cfg)
    assert _checkpoint_dirs(tmp_path / "a" / "run") == ["step4-unsharded"]
    neither = run_config(
        tmp_path / "b",
        stop_at=4,
        save_interval=2,
        save_num_checkpoints_to_keep=0,
        save_num_unsharded_checkpoints_to_keep=0,
    )
    result, _ = quiet_run(neither)
    assert result.checkpoint is None and _checkpoint_dirs(tmp_path / "b" / "run") == []


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "step9-unsharded-tmp").mkdir(parents=True)
    (run_dir / "step9-unsharded-tmp" / "model.safetensors").write_bytes(b"partial")
    (run_dir / ".step1-unsharded.deleting-ab12").mkdir()
    quiet_run(run_config(tmp_path, stop_at=3))
    assert _checkpoint_dirs(run_dir) == ["step3-unsharded"]
    assert not (run_dir / ".step1-unsharded.deleting-ab12").exists()


def test_a_stop_request_saves_at_the_step_boundary(tmp_path):
    stop = StopRequest()

    def on_event(event):
        if isinstance(event, StepDone) and event.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to stop_on_signals' handler inside run()

    cfg = run_config(tmp_path, stop_at=6, save_interval=None)
    with stop_on_signals(stop):  # the outer handler: a SIGTERM escaping run() would set this flag
        result = run(cfg, events=on_event, options=RunOptions(device="cpu", peak_flops=1e12))
    assert result.reason == "interrupted" and result.step == 2
    assert not stop.requested
    assert _checkpoint_dirs(tmp_path / "run") == ["step2-unsharded"]
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    result, _ = quiet_run(run_config(tmp_path, stop_at=50, save_interval=None, time_limit=1e-9))
    assert result.reason == "interrupted" and result.step == 1
    assert _checkpoint_dirs(tmp_path / "run") == ["step1-unsharded"]


# ---- kill -9 in the middle of a save ------------------------------------------------------------

_KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import olmo_cli.checkpoint.unsharded as unsharded
from tests.train._runs import quiet_run, run_config

# Test-only: hold the save of step 4 open (in {where}) so the test can SIGKILL it there.
def hold(original):
    def wrapper(*args):
        if "step4-unsharded" in str(args[-1]):
            {partial}
            print("SAVING", flush=True)
            time.sleep(300)
        return original(*args)
    return wrapper

unsharded.{target} = hold(unsharded.{target})
quiet_run(run_config(Path({tmp!r}), stop_at=6, save_interval=2))
"""


@pytest.mark.parametrize(
    "target, where, partial",
    [
        ("_move_into_place", "the rename of the complete -tmp directory", "pass"),
        ("_torch_save", "the middle of writing train.pt", "Path(args[-1]).write_bytes(b'half a pickle')"),
    ],
    ids=["before-rename", "mid-file"],
)
def test_kill_9_during_a_save_leaves_the_previous_checkpoint(tmp_path, target, where, partial):
    script = _KILLED_RUN.format(
        root=str(ROOT), tmp=str(tmp_path), target=target, where=where, partial=partial
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        line = ""
        while "SAVING" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "SAVING" in line, proc.stderr.read() if proc.poll() is not None else "no save started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = tmp_path / "run"
    names = _checkpoint_dirs(run_dir)
    assert "step4-unsharded" not in names  # nothing under the final name
    assert "step2-unsharded" in names
    assert (run_dir / "step4-unsharded-tmp").is_dir()  # the killed save, under its temporary name only
    cfg = run_config(tmp_path, stop_at=6, save_interval=2)
    previous = read_unsharded(run_dir / "step2-unsharded", model_config=cfg.model)
    assert previous.trainer["global_step"] == 2 and previous.optim is not None
    assert os.readlink(run_dir / "latest-unsharded") == "step2-unsharded"

    # The run resumes from it, cleans the leftover, and trains exactly as if never killed.
    quiet_run(cfg.model_copy(update={"load_path": str(run_dir / "step2-unsharded")}), continuing=True)
    assert not (run_dir / "step4-unsharded-tmp").exists()
    reference = run_config(tmp_path / "ref", stop_at=6, save_interval=2)
    quiet_run(reference)
    assert losses(run_dir) == losses(tmp_path / "ref" / "run")
