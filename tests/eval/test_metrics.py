"""Rank classification on hand-built log-likelihoods whose answers are known, the normalisation edge
cases included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from olmo_cli.eval.formats import Doc
from olmo_cli.eval.metrics import compute_metrics, f1_positive_first, mean_stderr
from olmo_cli.eval.requests import build_requests, cont_chars


def _requests(docs):
    return build_requests(docs, lambda texts: [[5] * max(1, len(t)) for t in texts], 0)


def test_acc_ranks_by_sum_and_len_norm_by_characters():
    docs = [Doc.shared_context("c", [" ab", " abcdefgh"], 1)]
    reqs = _requests(docs)
    # acc: -6 > -8, so choice 0; len_norm: -6/2 = -3 < -8/8 = -1, so choice 1 (the gold one).
    found = compute_metrics(reqs, np.array([-6.0, -8.0]), "len_norm")
    assert found.metrics == {"acc": 0.0, "len_norm": 1.0}
    assert found.predictions["acc"].tolist() == [0] and found.predictions["len_norm"].tolist() == [1]


@pytest.mark.parametrize(
    ("continuation", "chars"),
    [(" abc", 3), ("abc", 3), (" ", 1), ("\tx", 1), ("x", 1), ("  two", 4), (" ünï", 3)],
)
def test_len_norm_denominator(continuation, chars):
    # Upstream divides by len(continuation) - 1, the leading space not counted; without a leading space
    # every character counts, and a lone space divides by 1 rather than 0.
    assert cont_chars(continuation) == chars


def test_ties_go_to_the_first_choice_and_nan_never_wins():
    docs = [
        Doc.shared_context("c", [" a", " b", " c"], 1),
        Doc.shared_context("c", [" a", " b"], 0),
        Doc.shared_context("c", [" a", " b"], 1),
    ]
    reqs = _requests(docs)
    ll = np.array([-1.0, -1.0, -5.0, -2.0, -1.0, math.nan, -3.0])
    found = compute_metrics(reqs, ll, "acc")
    assert found.predictions["acc"].tolist() == [0, 1, 1]
    assert found.metrics["acc"] == pytest.approx(1 / 3)


def test_documents_with_different_numbers_of_choices():
    docs = [
        Doc.shared_context("c", [" a", " b", " c", " d", " e"], 4),
        Doc.shared_context("c", [" a", " b"], 0),
    ]
    reqs = _requests(docs)
    found = compute_metrics(reqs, np.array([-5.0, -4, -3, -2, -1, -0.5, -0.7]), "acc")
    assert found.metrics["acc"] == 1.0 and found.docs == 2


def test_standard_error_is_the_sample_std_over_sqrt_n():
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    assert mean_stderr(correct) == pytest.approx(0.5 / 2)  # std (ddof 1) = 0.5
    assert mean_stderr(np.array([1.0])) is None
    docs = [Doc.shared_context("c", [" a", " b"], g) for g in (0, 1, 0, 0)]
    found = compute_metrics(_requests(docs), np.array([-1.0, -2] * 4), "acc")
    assert found.metrics["acc"] == 0.75 and found.stderr["acc"] == pytest.approx(0.25)


def test_f1_takes_choice_zero_as_the_positive_class():
    gold = np.array([0, 0, 1, 1, 0])
    pred = np.array([0, 1, 0, 1, 0])  # tp 2, fp 1, fn 1
    assert f1_positive_first(gold, pred) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    docs = [Doc.shared_context("c", [" yes", " no"], int(g)) for g in gold]
    ll = np.array([[-1.0, -2.0] if p == 0 else [-2.0, -1.0] for p in pred]).ravel()
    found = compute_metrics(_requests(docs), ll, "f1")
    assert found.metrics["f1"] == pytest.approx(2 / 3) and found.stderr["f1"] is None
