"""`olmo train` and `olmo resume` through the real entry point: the dry-run plan (7B in seconds, under
1 GB), a small run and its resume, JSON events, user errors as one line with a hint, and SIGTERM/SIGINT
saving a checkpoint before a clean exit.

A real run with its resume, one user error, the signals and the import checks go through the installed
`olmo`; the other runs and user errors through its `main` in this process (`run_olmo_here`, the same
exit codes and output without an interpreter start each)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests._fixtures import SMALL_ARGS
from tests.train._runs import SEQ, pattern_tokens, write_token_dir

from ._helpers import ROOT, clean_env, olmo_executable, run_olmo, run_olmo_here

SMALL = [*SMALL_ARGS, "--set", "global_train_batch_size=8", "--set", "device_train_microbatch_size=4"]


@pytest.fixture
def data(tmp_path):
    return write_token_dir(tmp_path / "data", pattern_tokens(64 * SEQ, seed=3))


def _env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}


def _train(tmp_path: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_olmo_here(
        "train",
        *SMALL,
        "--data",
        str(data),
        "--save-folder",
        str(tmp_path / "run"),
        *args,
        cwd=tmp_path,
        **_env(tmp_path),
    )


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _user_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1, proc.stderr
    assert "hint:" in proc.stderr
    return proc.stderr


# ---- the dry run --------------------------------------------------------------------------------


def test_7b_dry_run_counts_the_parameters_in_seconds_under_1_gb(tmp_path):
    # A fresh parent process, so the peak RSS of its children is this command's alone.
    probe = (
        "import resource, subprocess, sys, time; t = time.monotonic(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.stdout); print(p.stderr, file=sys.stderr); "
        "print('RC', p.returncode, 'SECONDS', time.monotonic() - t, "
        "'MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, olmo_executable(), "train", "--preset", "7b", "--dry-run"],
        cwd=tmp_path,
        env=clean_env(COLUMNS="120", **_env(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "RC 0 " in proc.stdout, proc.stderr
    assert "6,888,095,744" in proc.stdout
    fields = proc.stdout.split("RC 0 ")[1].split()
    seconds, rss_kb = float(fields[1]), int(fields[3])
    assert rss_kb < 1024 * 1024, f"peak RSS {rss_kb / 1024:.0f} MiB"
    assert seconds < 60  # a few seconds on an idle machine; generous for a shared CI runner
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_dry_run_json_for_a_world_size(tmp_path):
    proc = run_olmo(
        "train",
        "--preset",
        "1b",
        "--dry-run",
        "--json",
        "--nproc-per-node",
        "8",
        cwd=tmp_path,
        **_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["parameters_built_on_meta"] == plan["params"] == 1_176_764_416
    assert plan["world_size"] == 8 and plan["device_batch_size"] == 2048 // 8
    assert plan["memory"]["total_bytes"] > 0 and plan["tokens_per_step"] == 4_194_304


def test_an_olmo2_stage2_config_plans_and_names_what_it_does_not_act_on(tmp_path):
    import numpy as np

    from tests._upstream_config import olmo2_stage2_style_config

    np.arange(3 * 4096, dtype="<u4").tofile(tmp_path / "mix.npy")
    config = tmp_path / "OLMo2-7B-stage2-seed42.yaml"
    config.write_text(yaml.safe_dump(olmo2_stage2_style_config(str(tmp_path / "mix.npy"))))
    args = ("train", "--config", str(config), "--dry-run")
    proc = run_olmo(*args, "--json", cwd=tmp_path, **_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["params"] == 7_298_617_344
    # upstream's own comment: stop_at 11931 = round(50e9 / (1024 * 4096)) + 10
    assert (plan["steps"], plan["train_steps"], plan["tokens_per_step"]) == (11921, 11931, 4_194_304)
    assert plan["stop_reason"] == "stop_at=11931 (the schedule of max_duration=50e9T ends at step 11921)"
    assert {item["key"] for item in plan["not_acted_on"]} == {
        "model.flash_attention",
        "fused_loss",
        "sharded_checkpointer",
        "auxiliary_loss_multiplier",
    }
    shown = run_olmo(*args, cwd=tmp_path, **_env(tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "4 settings in this config are not acted on" in shown.stderr
    assert "stops after step 11,931: stop_at=11931" in shown.stdout
    assert "auxiliary_loss_multiplier = 1e-05" in shown.stderr


# ---- a real run, and its resume ----------------------------------------------------------------------


def test_train_then_resume(tmp_path, data):
    # A run directory whose name YAML would read as a number: typed options are never re-parsed.
    first = run_olmo(
        "train",
        *SMALL,
        *("--data", str(data), "--save-folder", "2024"),
        *("--set", "max_duration=6", "--set", "stop_at=3", "--set", "save_interval=3"),
        cwd=tmp_path,
        **_env(tmp_path),
    )
    assert first.returncode == 0, first.stderr
    assert "finished at step 3" in first.stdout
    assert "step 3: saved unsharded checkpoint" in first.stdout
    run_dir = tmp_path / "2024"
    assert [r["step"] for r in _records(run_dir)] == [1, 2, 3]

    second = run_olmo("resume", "2024", "--set", "stop_at=6", "--no-wandb", cwd=tmp_path, **_env(tmp_path))
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout and "finished at step 6" in second.stdout
    assert [r["step"] for r in _records(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / "step6-unsharded").is_dir()


@pytest.mark.parametrize("name", ["2024", "on", "null", "a: b", "[x]"])
def test_save_folder_names_yaml_would_misread(tmp_path, data, name):
    # --save-folder is a typed option: its text is the folder's name, never a --set read as YAML.
    proc = run_olmo_here(
        "train",
        *SMALL,
        *("--data", str(data), "--save-folder", name, "--set", "max_duration=1", "--set", "stop_at=1"),
        cwd=tmp_path,
        **_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "finished at step 1" in proc.stdout
    saved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
    assert saved["save_folder"] == name
    assert (tmp_path / name / "step1-unsharded").is_dir()


def test_json_events(tmp_path, data):
    proc = _train(tmp_path, data, "--set", "max_duration=2", "--set", "stop_at=2", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert events[-1]["checkpoint"].endswith("step2-unsharded")


# ---- user errors ----------------------------------------------------------------------------------


def test_missing_data_is_one_error_line(tmp_path):
    proc = run_olmo_here("train", *SMALL, "--data", str(tmp_path / "none"), cwd=tmp_path, **_env(tmp_path))
    assert "data path not found" in _user_error(proc, 3)


def test_indivisible_batch_is_one_error_line(tmp_path, data):
    proc = _train(tmp_path, data, "--set", "device_train_microbatch_size=3")
    assert "device_train_microbatch_size" in _user_error(proc, 2)


def test_a_folder_holding_another_run_is_refused(tmp_path, data):
    assert _train(tmp_path, data, "--set", "max_duration=1", "--set", "stop_at=1").returncode == 0
    proc = _train(tmp_path, data, "--set", "max_duration=2", "--set", "stop_at=2")
    assert "olmo resume" in _user_error(proc, 2)


def test_resume_without_a_checkpoint_is_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_olmo("resume", str(tmp_path / "empty"), cwd=tmp_path, **_env(tmp_path))
    assert "no checkpoint" in _user_error(proc, 4)


# ---- signals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, data, sig):
    run_dir = tmp_path / "run"
    args = ["train", *SMALL, "--data", str(data), "--save-folder", str(run_dir)]
    args += ["--set", "max_duration=100000", "--set", "save_interval=null", "--set", "stop_at=null"]
    proc = subprocess.Popen(
        [olmo_executable(), *args],
        cwd=tmp_path,
        env=clean_env(**_env(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err  # "stopped, checkpoint saved": not 0, which means finished
    assert "stopped by a signal" in out
    last = _records(run_dir)[-1]["step"]
    assert (run_dir / f"step{last}-unsharded").is_dir()
    assert (run_dir / "latest-unsharded").resolve().name == f"step{last}-unsharded"


def test_train_help_imports_no_torch():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "olmo_cli", "train", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    imported = {line.rpartition("|")[2].strip().partition(".")[0] for line in proc.stderr.splitlines()}
    assert "torch" not in imported and "Usage: olmo train" in proc.stdout


# ---- the display's pieces -------------------------------------------------------------------------


def test_sparkline_and_durations():
    from olmo_cli.commands._train_display import format_duration, sparkline

    assert sparkline([4.0, 3.0, 2.0, 1.0]) == "█▅▃▁"
    assert sparkline([2.0, 2.0]) == "▁▁" and sparkline([]) == ""
    assert len(sparkline([float(i) for i in range(100)])) == 40  # the last 40 only
    assert [format_duration(s) for s in (5, 125, 7322, 3 * 86400 + 7200)] == ["5s", "2m05s", "2h02m", "3d02h"]
    assert format_duration(None) == "-" and format_duration(1e10).endswith("years")


def test_one_setting_not_acted_on_is_reported_in_the_singular(tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text("run_name: one\nsave_data_indices: true\n")
    shown = run_olmo_here("presets", "show", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "1 setting in this config is not acted on" in shown.stderr
    assert "save_data_indices = True" in shown.stderr
