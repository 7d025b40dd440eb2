"""run_eval, the engine entry of `olmo eval`: the stages it reports, in order and with their amounts of
work, the results it returns, and the request errors it raises before the model loads."""

from __future__ import annotations

import json

import pytest

from olmo_cli.errors import CheckpointError, UsageError
from olmo_cli.eval.events import StageDone, StageProgress, StageStarted
from olmo_cli.eval.run import EvalRequest, run_eval
from tests.eval._trained import write_lookup_task


def test_stages_and_results(lookup_checkpoint, tmp_path):
    path, _ = lookup_checkpoint
    task_file = write_lookup_task(tmp_path / "lookup.jsonl")
    text = tmp_path / "qa.jsonl"
    text.write_text("".join(json.dumps({"text": f"Q: k{i} A: v{i}"}) + "\n" for i in range(8)))
    events: list[object] = []
    request = EvalRequest(
        checkpoint=path, perplexity=True, data=[f"qa={text}"], task_files=[task_file], seq_len=8, batch_size=3
    )
    result = run_eval(request, events.append)

    assert result.tasks[0].metrics == {"acc": 0.5, "len_norm": 0.5}
    ppl = result.perplexity[0]
    assert ppl.label == "qa" and ppl.tokens == 8 * 5 - 5
    assert result.settings["seq_len"] == 8 and result.settings["dtype"] == "float32"
    assert result.settings["device"] == "cpu" and result.checkpoint_kind == "unsharded"

    starts = [e for e in events if isinstance(e, StageStarted)]
    assert [(s.stage, s.name, s.number, s.count, s.unit) for s in starts] == [
        ("perplexity", "qa", 1, 1, "tokens"),
        ("task", "lookup", 1, 1, "requests"),
    ]
    assert starts[0].total == ppl.tokens and starts[1].total == result.tasks[0].requests == 128
    # each stage: started, cumulative progress up to its total, done
    for start in starts:
        i = events.index(start)
        j = events.index(StageDone(start.name), i)
        done = [e.done for e in events[i + 1 : j] if isinstance(e, StageProgress)]
        assert done == sorted(done) and done[-1] == start.total and len(done) > 1


def test_request_errors_come_before_the_model(lookup_checkpoint, tmp_path):
    path, _ = lookup_checkpoint
    with pytest.raises(CheckpointError, match="does not exist"):
        run_eval(EvalRequest(checkpoint=tmp_path / "missing"))
    with pytest.raises(UsageError, match="--perplexity is not"):
        run_eval(EvalRequest(checkpoint=path, data=["x.jsonl"]))
    with pytest.raises(UsageError, match="needs DATA"):
        run_eval(EvalRequest(checkpoint=path, perplexity=True))
    with pytest.raises(UsageError, match="nosuchtask"):
        run_eval(EvalRequest(checkpoint=path, tasks=["nosuchtask"]))
