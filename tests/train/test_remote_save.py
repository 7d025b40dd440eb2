"""`remote_save_folder` (docs/format.md §4.9) against a local S3-compatible server: every checkpoint a
run saves appears there, verified; retention deletes the remote copies too; upload failures are
warnings, never a crashed run; a missing boto3 is one error before anything; and `olmo resume
--load-path s3://…` (or a run directory whose checkpoints are gone) continues with exactly the losses
of a run that never stopped."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from olmo_cli.config.loader import load_config
from olmo_cli.errors import ConfigError, NetworkError
from olmo_cli.hub import remote_checkpoints
from olmo_cli.hub.objstore import S3Store
from olmo_cli.hub.remote_checkpoints import MANIFEST
from olmo_cli.train.events import Message
from tests._s3_server import S3, s3, s3_server  # noqa: F401 - fixtures
from tests.cli._helpers import run_olmo_here
from tests.train._runs import losses, quiet_run, run_config


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr(remote_checkpoints, "RETRY_DELAY_S", 0.0)


def _messages(events: list, level: str | None = None) -> list[str]:
    return [e.text for e in events if isinstance(e, Message) and (level is None or e.level == level)]


def _remote_checkpoints(s3: S3, prefix: str = "run/") -> dict[str, dict[str, dict]]:  # noqa: F811
    """{checkpoint name: {relative file name: listing entry}} of what the bucket holds under `prefix`."""
    out: dict[str, dict[str, dict]] = {}
    for key, item in s3.keys(prefix).items():
        name, _, rel = key[len(prefix) :].partition("/")
        out.setdefault(name, {})[rel] = item
    return out


def _local_files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_every_checkpoint_is_uploaded_with_its_manifest(s3, tmp_path):  # noqa: F811
    cfg = run_config(tmp_path, remote_save_folder=s3.url("run"), stop_at=6, save_interval=3)
    result, events = quiet_run(cfg)
    assert result.step == 6
    assert f"checkpoints are uploaded to {s3.url('run')}" in _messages(events)[0]
    assert not _messages(events, "warning")
    remote = _remote_checkpoints(s3)
    assert sorted(remote) == ["step3-unsharded", "step6-unsharded"]
    client = s3.client()
    for name, objects in remote.items():
        local = _local_files(tmp_path / "run" / name)
        assert set(objects) == {*local, MANIFEST}
        for rel, data in local.items():
            head = client.head_object(Bucket=s3.bucket, Key=f"run/{name}/{rel}")
            assert head["ContentLength"] == len(data)
            assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
            assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()  # noqa: S324
        body = client.get_object(Bucket=s3.bucket, Key=f"run/{name}/{MANIFEST}")["Body"].read()
        listed = {f["name"]: f["sha256"] for f in json.loads(body)["files"]}
        assert listed == {rel: hashlib.sha256(data).hexdigest() for rel, data in local.items()}


def test_remote_save_folder_is_acted_on_and_the_rest_still_listed(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "remote_save_folder: s3://bucket/run\ncanceled_check_interval: 10\neval_on_load: true\n"
        "data: {generate_doc_lengths: true}\noptimizer: {record_update_metrics: true}\n"
        "wandb: {log_artifacts: true}\n"
    )
    ignored = {i.path for i in load_config(config_file=config).ignored}
    assert ignored == {  # remote_save_folder is acted on; what still is not is said by name
        "canceled_check_interval",
        "eval_on_load",
        "data.generate_doc_lengths",
        "optimizer.record_update_metrics",
        "wandb.log_artifacts",
    }


def test_retention_deletes_the_remote_copies(s3, tmp_path):  # noqa: F811
    cfg = run_config(
        tmp_path, remote_save_folder=s3.url("run"), stop_at=6, save_interval=1, save_num_checkpoints_to_keep=1
    )
    _, events = quiet_run(cfg)
    assert sorted(p.name for p in (tmp_path / "run").glob("step*")) == ["step6-unsharded"]
    remote = _remote_checkpoints(s3)
    assert sorted(remote) == ["step6-unsharded"], remote
    assert MANIFEST in remote["step6-unsharded"]
    assert not _messages(events, "warning")


def test_a_failing_store_is_a_warning_and_the_run_finishes(s3, tmp_path, monkeypatch):  # noqa: F811
    real, calls = S3Store.upload, []

    def flaky(self, path, key, sha256):  # the first two tries fail, as a dropped connection would
        calls.append(key)
        if len(calls) <= 2:
            raise NetworkError("connection reset by peer")
        real(self, path, key, sha256)

    monkeypatch.setattr(S3Store, "upload", flaky)
    cfg = run_config(tmp_path / "a", remote_save_folder=s3.url("a"), stop_at=3, save_interval=3)
    result, events = quiet_run(cfg)
    assert result.reason == "finished"
    assert any("try 1 of 5 failed (connection reset by peer)" in t for t in _messages(events, "warning"))
    assert MANIFEST in _remote_checkpoints(s3, "a/")["step3-unsharded"]

    monkeypatch.setattr(
        S3Store, "upload", lambda *a: (_ for _ in ()).throw(NetworkError("the store is down"))
    )
    cfg = run_config(tmp_path / "b", remote_save_folder=s3.url("b"), stop_at=3, save_interval=3)
    result, events = quiet_run(cfg)
    assert result.reason == "finished" and result.step == 3  # the checkpoint is safe locally
    warnings = _messages(events, "warning")
    assert "did not upload" in warnings[-1] and "step3-unsharded" in warnings[-1]
    assert "the store is down" in warnings[-1] and "olmo resume" in warnings[-1]
    assert any(t.startswith("waiting for the uploads") for t in _messages(events, "info"))
    assert MANIFEST not in _remote_checkpoints(s3, "b/").get("step3-unsharded", {})


def test_a_missing_boto3_is_one_error_before_anything(s3, tmp_path, monkeypatch):  # noqa: F811
    import builtins

    real = builtins.__import__

    def no_boto3(name, *args, **kwargs):
        if name.split(".")[0] in ("boto3", "botocore"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto3)
    cfg = run_config(tmp_path, remote_save_folder=s3.url("run"), stop_at=3)
    proc = run_olmo_here(
        "train",
        *("--config", _write_config(cfg, tmp_path / "cfg.yaml")),
        *("--device", "cpu", "--no-wandb"),
        cwd=tmp_path,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "boto3 is not installed" in proc.stderr and "pip install 'olmo-cli[s3]'" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_a_new_run_does_not_mix_into_another_runs_uploads(s3, tmp_path):  # noqa: F811
    quiet_run(run_config(tmp_path / "first", remote_save_folder=s3.url("run"), stop_at=3))
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints up to step3-unsharded\)"):
        quiet_run(run_config(tmp_path / "second", remote_save_folder=s3.url("run"), stop_at=3))


def _write_config(cfg, path: Path) -> str:
    from olmo_cli.train.prepare import config_yaml

    path.write_text(config_yaml(cfg))
    return str(path)


def _whole_and_uploaded(s3, tmp_path: Path, stop_at: int, save_interval: int) -> Path:  # noqa: F811
    """A run to step 6 without a store (the reference), and the same run to `stop_at` uploading to
    `s3.url("run")`; returns the second's run directory."""
    quiet_run(run_config(tmp_path / "whole", stop_at=6, save_interval=save_interval))
    split = run_config(
        tmp_path / "split", remote_save_folder=s3.url("run"), stop_at=stop_at, save_interval=save_interval
    )
    quiet_run(split)
    return tmp_path / "split" / "run"


def test_resume_from_the_store_continues_exactly(s3, tmp_path):  # noqa: F811
    run_dir = _whole_and_uploaded(s3, tmp_path, stop_at=3, save_interval=3)
    shutil.rmtree(run_dir)  # a new machine: only the store has the run
    cache = tmp_path / "cache"

    proc = run_olmo_here(
        "resume",
        "--load-path",
        s3.url("run/step3-unsharded"),
        *("--set", "stop_at=6", "--set", "save_num_checkpoints_to_keep=1", "--device", "cpu", "--no-wandb"),
        cwd=tmp_path,
        XDG_CACHE_HOME=str(cache),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"downloading {s3.url('run/step3-unsharded')}" in proc.stderr
    assert f"continuing in {run_dir}" in proc.stderr
    assert "resumed from" in proc.stdout and "finished at step 6" in proc.stdout
    downloaded = cache / "olmo" / "remote-checkpoints" / "s3" / s3.bucket / "run" / "step3-unsharded"
    uninterrupted = tmp_path / "whole" / "run" / "step3-unsharded"
    for name in ("model.safetensors", "optim.safetensors"):
        assert (downloaded / name).read_bytes() == (uninterrupted / name).read_bytes()
    expected = losses(tmp_path / "whole" / "run")
    assert losses(run_dir) == {step: expected[step] for step in (4, 5, 6)}  # bit for bit
    # The resumed run uploads too, and its retention counts the checkpoint it came from, in its store.
    remote = _remote_checkpoints(s3)
    assert sorted(remote) == ["step6-unsharded"] and MANIFEST in remote["step6-unsharded"]


def test_resume_of_a_run_directory_without_checkpoints_takes_the_newest_uploaded(s3, tmp_path):  # noqa: F811
    run_dir = _whole_and_uploaded(s3, tmp_path, stop_at=4, save_interval=2)
    for checkpoint in run_dir.glob("step*"):  # the disk lost its checkpoints; config.yaml is left
        shutil.rmtree(checkpoint)

    proc = run_olmo_here(
        "resume",
        *(str(run_dir), "--set", "stop_at=6", "--device", "cpu", "--no-wandb"),
        cwd=tmp_path,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"continuing from the newest one uploaded, {s3.url('run/step4-unsharded')}" in proc.stderr
    assert losses(run_dir) == losses(tmp_path / "whole" / "run")


def test_the_readme_example_config_loads():
    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Saving to object storage.**", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = yaml.safe_load(block)
    overrides = [f"{key}={value}" for key, value in settings.items()]
    cfg = load_config(preset="tiny", overrides=overrides).config
    assert cfg.remote_save_folder == "s3://my-bucket/runs/olmo-tiny"
    assert cfg.save_num_checkpoints_to_keep == 3


def test_a_downloaded_config_may_not_pick_a_directory_holding_something_else(s3, tmp_path):  # noqa: F811
    quiet_run(run_config(tmp_path, remote_save_folder=s3.url("run"), stop_at=3, save_interval=3))
    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir)
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("someone else's")
    proc = run_olmo_here(
        "resume", "--load-path", s3.url("run"), cwd=tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache")
    )
    assert proc.returncode == 4, proc.stderr
    assert "holds something other than this run" in proc.stderr and "olmo resume RUN_DIR" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]
