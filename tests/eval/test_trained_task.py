"""End to end through the engine: a model trained on a synthetic task reaches the accuracy the task was
built to have (see tests/eval/_trained.py)."""

from __future__ import annotations

import pytest

from olmo_cli.eval.downstream import evaluate_prepared, prepare_task
from olmo_cli.load.build import load_model, load_tokenizer
from olmo_cli.load.read import read_checkpoint
from tests.eval._trained import TABLE, lookup_task


def test_trained_model_reaches_the_known_accuracy(lookup_checkpoint):
    path, _ = lookup_checkpoint
    found = read_checkpoint(path)
    model, tokenizer = load_model(found), load_tokenizer(found)
    result = evaluate_prepared(model, prepare_task(lookup_task(), tokenizer), batch_size=5)
    assert result.docs == 16 and result.requests == 128
    assert result.metrics == {"acc": 0.5, "len_norm": 0.5}
    assert result.predictions["acc"].tolist() == [TABLE[i] for i in range(8)] * 2  # learned
    assert result.forward_rows == 8  # one row per distinct context; one-token choices add nothing
    assert result.stderr["acc"] == pytest.approx(0.5 / 4 * (16 / 15) ** 0.5)
