"""Multiple-choice evaluation of a model on tasks: tokenize once, score, compute metrics.

Used by `olmo eval` and, in the training loop, by the evaluator callback (`type: downstream`
evaluators), which logs `eval/downstream/{label}_{metric}` as upstream does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from olmo_cli.eval.metrics import compute_metrics
from olmo_cli.eval.requests import MAX_LENGTH, TaskRequests, build_requests
from olmo_cli.eval.scoring import plan_rows, score_requests
from olmo_cli.eval.taskfile import TaskData

if TYPE_CHECKING:
    from olmo_cli.data.tokenizer import ResolvedTokenizer

__all__ = ["PreparedTask", "TaskResult", "encoder_for", "evaluate_prepared", "prepare_task"]


@dataclass
class TaskResult:
    name: str
    primary_metric: str
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    docs: int
    requests: int
    forward_rows: int  # distinct model inputs after sharing prefixes
    seconds: float
    version: str = ""
    source: str = ""
    predictions: dict[str, Any] = field(default_factory=dict)  # metric -> predicted choice per doc

    @property
    def primary(self) -> float:
        return self.metrics[self.primary_metric]


@dataclass
class PreparedTask:
    task: TaskData
    requests: TaskRequests
    rows: int
    pad_token_id: int


def encoder_for(tokenizer: ResolvedTokenizer) -> Callable[[list[str]], list[list[int]]]:
    """Batch tokenization without special tokens (upstream encodes eval text without BOS/EOS)."""
    inner = tokenizer.tokenizer

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in inner.encode_batch(texts, add_special_tokens=False)] if texts else []

    return encode


def prepare_task(task: TaskData, tokenizer: ResolvedTokenizer, max_length: int = MAX_LENGTH) -> PreparedTask:
    reqs = build_requests(task.docs, encoder_for(tokenizer), tokenizer.identity.eos_token_id, max_length)
    rows = len(plan_rows(reqs.requests))
    return PreparedTask(task, reqs, rows, tokenizer.identity.pad_token_id)


def evaluate_prepared(
    model: nn.Module,
    prepared: PreparedTask,
    *,
    batch_size: int,
    pad_token_id: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    full_logits: bool = False,
    progress: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> TaskResult:
    """Scores one task; the model is put in eval mode for it and back in the mode it was in."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        scores = score_requests(
            model,
            prepared.requests.requests,
            batch_size=batch_size,
            pad_token_id=prepared.pad_token_id if pad_token_id is None else pad_token_id,
            autocast_dtype=autocast_dtype,
            full_logits=full_logits,
            progress=progress,
            rank=rank,
            world_size=world_size,
            all_reduce=all_reduce,
        )
    finally:
        model.train(was_training)
    task = prepared.task
    found = compute_metrics(prepared.requests, scores.loglikelihood, task.primary_metric)
    return TaskResult(
        name=task.name,
        primary_metric=task.primary_metric,
        metrics=found.metrics,
        stderr=found.stderr,
        docs=found.docs,
        requests=len(prepared.requests.requests),
        forward_rows=prepared.rows,
        seconds=time.perf_counter() - started,
        version=task.version,
        source=task.source,
        predictions=found.predictions,
    )


def in_loop_metrics(label: str, result: TaskResult) -> dict[str, float]:
    """Upstream's key for a downstream evaluator: `eval/downstream/{label}_{metric}` (primary metric)."""
    return {f"eval/downstream/{label}_{result.primary_metric}": result.primary}
