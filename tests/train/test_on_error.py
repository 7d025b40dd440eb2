"""The callbacks' on_error hook: called once when a run fails with an exception (not on a normal end),
each callback's own failure contained; the checkpointer cleans up and names the checkpoint to resume
from, the wandb sink marks its run failed."""

from __future__ import annotations

import pytest

from olmo_cli.train.callbacks.base import Callback, CallbackList
from olmo_cli.train.callbacks.wandb_sink import WandbSink
from olmo_cli.train.events import Message
from olmo_cli.train.loop import Trainer
from olmo_cli.train.run import RunOptions, run
from tests.train._runs import run_config


class _Recorder(Callback):
    def __init__(self, name: str, calls: list[str], *, fail: bool = False) -> None:
        self.name, self.calls, self.fail = name, calls, fail

    def on_error(self, trainer, error):
        self.calls.append(f"{self.name}.error:{error}")
        if self.fail:
            raise RuntimeError("clean-up failed too")


def test_every_callback_hears_of_the_error_even_if_one_fails():
    calls: list[str] = []
    hooks = CallbackList([_Recorder("a", calls, fail=True), _Recorder("b", calls)])
    hooks.on_error(None, ValueError("boom"))  # type: ignore[arg-type]
    assert calls == ["a.error:boom", "b.error:boom"]


def test_a_failing_run_calls_on_error_and_keeps_its_error(tmp_path, monkeypatch):
    cfg = run_config(tmp_path, max_duration=6, stop_at=6, save_interval=2)
    real_step = Trainer.train_step

    def failing_step(self, batch):
        if self.state.global_step == 3:
            (tmp_path / "run" / "step3-unsharded-tmp").mkdir()  # as a save cut short would leave it
            raise OSError("the disk went away")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    events: list = []
    with pytest.raises(OSError, match="the disk went away"):
        run(cfg, events=events.append, options=RunOptions(device="cpu", peak_flops=1e12))
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("failed at step 3" in w and "step2-unsharded" in w and "olmo resume" in w for w in warnings)
    assert not (tmp_path / "run" / "step3-unsharded-tmp").exists()


def test_a_finished_run_does_not_call_on_error(tmp_path):
    cfg = run_config(tmp_path, max_duration=2, stop_at=2)
    events: list = []
    run(cfg, events=events.append, options=RunOptions(device="cpu", peak_flops=1e12))
    assert not any(isinstance(e, Message) and "failed at step" in e.text for e in events)


def test_wandb_marks_its_run_failed():
    finished: list[dict] = []

    class FakeRun:
        def finish(self, **kwargs):
            finished.append(kwargs)

    sink = WandbSink.__new__(WandbSink)
    sink._run = FakeRun()
    sink.on_error(None, RuntimeError("x"))  # type: ignore[arg-type]
    assert finished == [{"exit_code": 1}] and sink._run is None
