"""Rank classification: per document, the choice with the highest score is the prediction.

Scores (upstream ICLMetric, docs/format.md §9.2): `acc` ranks by the summed log-likelihood, `len_norm`
by log-likelihood per character of the continuation (without its leading space); ties go to the first
choice. `f1` (MRPC) is the F1 of the `acc` predictions with choice 0 as the positive class. Standard
errors are the sample standard deviation of the per-document outcomes over sqrt(n), as
lm-evaluation-harness reports them (none for f1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from olmo_cli.eval.requests import TaskRequests

__all__ = ["TaskScores", "compute_metrics", "mean_stderr"]


@dataclass
class TaskScores:
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    docs: int
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> predicted choice per doc


def mean_stderr(values: np.ndarray) -> float | None:
    n = len(values)
    if n < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(n))


def _argmax_per_doc(values: np.ndarray, doc: np.ndarray, choice: np.ndarray, n_docs: int) -> np.ndarray:
    """The first choice with the highest value in each document (NaN never wins)."""
    width = int(choice.max()) + 1 if len(choice) else 1
    table = np.full((n_docs, width), -np.inf)
    table[doc, choice] = np.where(np.isnan(values), -np.inf, values)
    return table.argmax(axis=1)  # argmax returns the first maximum: upstream's tie rule


def f1_positive_first(gold: np.ndarray, pred: np.ndarray) -> float:
    tp = int(np.sum((pred == 0) & (gold == 0)))
    fp = int(np.sum((pred == 0) & (gold != 0)))
    fn = int(np.sum((pred != 0) & (gold == 0)))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def compute_metrics(reqs: TaskRequests, loglikelihood: np.ndarray, primary: str) -> TaskScores:
    """acc and len_norm for every task, and f1 where it is the primary metric."""
    n_docs = len(reqs.gold)
    ranked = {
        "acc": loglikelihood,
        "len_norm": loglikelihood / reqs.chars,
    }
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    predictions = {}
    for name, values in ranked.items():
        pred = _argmax_per_doc(values, reqs.doc, reqs.choice, n_docs)
        correct = (pred == reqs.gold).astype(np.float64)
        metrics[name] = float(correct.mean()) if n_docs else math.nan
        stderr[name] = mean_stderr(correct)
        predictions[name] = pred
    if primary == "f1":
        metrics["f1"] = f1_positive_first(reqs.gold, predictions["acc"])
        stderr["f1"] = None
    return TaskScores(metrics, stderr, n_docs, predictions)
