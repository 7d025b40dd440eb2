"""The training display's plain mode: every event class reaches its own renderer (dispatch by `match` on
the class), and what is not an event of the engine is ignored."""

from __future__ import annotations

import io
import typing
from pathlib import Path

import pytest
from rich.console import Console

from olmo_cli import ui
from olmo_cli.commands._train_display import TrainDisplay
from olmo_cli.train import events as ev

SAMPLES = [
    ev.Message("using the default corpus"),
    ev.Message("lr is ignored", level="warning"),
    ev.DataProgress("tokenizing", 10, 100),
    ev.RunStarted(
        "olmo-tiny",
        Path("runs/t"),
        {"params": 1234, "tokens_per_step": 64},
        0,
        4,
        1,
        "cpu",
        "fp32",
        "x.npy",
        stop_reason="stop_at=4 (the schedule of max_duration=2 ends at step 2)",
    ),
    ev.StepDone(1, 4, 2.5, 1e-3, 100.0, None, 3.0),
    ev.CheckpointSaved(2, Path("runs/t/step2-unsharded"), False, 0.5),
    ev.EvalDone(2, {"eval/val/CrossEntropyLoss": 2.25, "eval/val/Perplexity": 9.5}, 0.25),
    ev.RunFinished(4, "finished", 12.0, 2.5, 2.0, Path("runs/t/step4-unsharded")),
]


@pytest.fixture
def screens(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=out, width=200, highlight=False))
    monkeypatch.setattr(ui, "err_console", Console(file=err, width=200, highlight=False))
    return out, err


def test_the_samples_cover_every_event_class():
    assert {type(e) for e in SAMPLES} == set(typing.get_args(ev.Event))


def test_each_event_class_is_rendered_by_its_own_handler(screens):
    out, err = screens
    with TrainDisplay(mode="plain") as show:
        for event in SAMPLES:
            show(event)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("olmo-tiny: 1,234 parameters, cpu x1, fp32; 64 tokens per step; steps 1..4")
    assert lines[1] == "stops after step 4: stop_at=4 (the schedule of max_duration=2 ends at step 2)"
    assert "data: x.npy" in lines and "run directory: runs/t" in lines
    assert "step 1/4 · loss 2.5000 · lr 0.001 · 100 tok/s · ETA 3s" in lines
    assert "step 2: saved unsharded checkpoint runs/t/step2-unsharded (0.5s)" in lines
    assert "step 2: eval val/CrossEntropyLoss 2.25 (0.2s)" in lines
    said = lines[lines.index("step 2: eval val/CrossEntropyLoss 2.25 (0.2s)") + 1]
    assert "in-loop loss as upstream computes it" in said and "weights every token alike" in said
    assert "finished at step 4 in 12s; loss 2.5000 -> 2.0000" in lines
    assert lines[-1] == "checkpoint: runs/t/step4-unsharded"
    assert "using the default corpus" in err.getvalue() and "warning: lr is ignored" in err.getvalue()
    assert "tokenizing" not in out.getvalue() + err.getvalue()  # data progress is a live-panel bar only


def test_what_is_not_an_engine_event_is_ignored(screens):
    out, err = screens
    TrainDisplay(mode="plain")(object())  # type: ignore[arg-type]
    assert out.getvalue() == err.getvalue() == ""
