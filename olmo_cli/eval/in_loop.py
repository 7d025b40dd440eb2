"""Downstream (`type: downstream`) evaluators in the training loop, upstream's way (docs/format.md §9.2):
the evaluator's label names the task (`piqa`, `openbook_qa`, ...), every rank scores its share of the
requests, and the task's metric is logged as `eval/downstream/{label}_{metric}`.

Task data is read when the run starts and tokenized once, at the first evaluation. A label this olmo
cannot run (an unknown task, or upstream data that is not installed) is reported through `warn` and
skipped rather than stopping the run, the same as before downstream evaluators were supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from olmo_cli.errors import ConfigError, OlmoError
from olmo_cli.eval.downstream import PreparedTask, evaluate_prepared, in_loop_metrics, prepare_task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from olmo_cli.config.schema import TrainConfig
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.eval.taskfile import TaskData

__all__ = ["TaskSet", "downstream_sets", "run_task_set"]


@dataclass
class TaskSet:
    label: str
    task: TaskData
    tokenizer: ResolvedTokenizer
    batch_size: int
    max_batches: int | None  # upstream's subset_num_batches (None: all)
    prepared: PreparedTask | None = None  # tokenized on first use, once the world size is known


def _doc_limit(docs_choices: Sequence[int], max_requests: int | None) -> int | None:
    """How many leading documents hold `max_requests` requests (upstream's subset_num_batches counts
    batches of requests, read in order); None: all of them."""
    if max_requests is None:
        return None
    total = 0
    for count, choices in enumerate(docs_choices, 1):
        total += choices
        if total >= max_requests:
            return count
    return None


def downstream_sets(cfg: TrainConfig, warn: Callable[[str], None]) -> list[TaskSet]:
    """A TaskSet for every downstream evaluator of `cfg` that can run here."""
    evaluators = [ev for ev in cfg.evaluators if ev.type == "downstream"]
    if not evaluators:
        return []
    from olmo_cli.eval.package_data import find_package_data
    from olmo_cli.eval.tasks import load_tasks

    data = find_package_data()
    tokenizer = None
    sets = []
    for ev in evaluators:
        try:
            (task,) = load_tasks([ev.label], data=data)
            if tokenizer is None:
                tokenizer = _tokenizer(cfg)
        except OlmoError as e:
            warn(f"evaluator {ev.label!r} is skipped: {e.message}" + (f" ({e.hint})" if e.hint else ""))
            continue
        batches = ev.subset_num_batches if ev.subset_num_batches is not None else cfg.eval_subset_num_batches
        batch_size = ev.device_eval_batch_size or cfg.device_eval_batch_size
        sets.append(
            TaskSet(
                ev.label, task, tokenizer, batch_size, None if batches is None or batches < 0 else batches
            )
        )
    return sets


def _tokenizer(cfg: TrainConfig) -> ResolvedTokenizer:
    from olmo_cli.data.tokenizer import resolve_tokenizer

    model = cfg.model
    tokenizer = resolve_tokenizer(
        cfg.tokenizer.identifier, eos_token_id=model.eos_token_id, pad_token_id=model.pad_token_id
    )
    if tokenizer.identity.vocab_size > model.padded_vocab_size:
        raise ConfigError(
            f"tokenizer {cfg.tokenizer.identifier} has {tokenizer.identity.vocab_size} tokens, more than the "
            f"model's {model.padded_vocab_size} embeddings",
            hint="tokenizer.identifier must name the tokenizer the model is trained with",
        )
    return tokenizer


def run_task_set(
    model: nn.Module,
    task_set: TaskSet,
    *,
    rank: int,
    world_size: int,
    autocast_dtype: torch.dtype | None,
    all_reduce: Callable[[Any], None] | None = None,
) -> dict[str, float]:
    """`{eval/downstream/{label}_{metric}: value}`; every rank must call it (FSDP forward passes)."""
    if task_set.prepared is None:
        task = task_set.task
        budget = (
            None if task_set.max_batches is None else task_set.max_batches * task_set.batch_size * world_size
        )
        limit = _doc_limit([d.num_choices for d in task.docs], budget)
        if limit is not None:
            task = replace(task, docs=task.docs[:limit])
        task_set.prepared = prepare_task(task, task_set.tokenizer)
    result = evaluate_prepared(
        model,
        task_set.prepared,
        batch_size=task_set.batch_size,
        autocast_dtype=autocast_dtype,
        full_logits=True,  # FSDP's root hooks must see the whole forward
        rank=rank,
        world_size=world_size,
        all_reduce=all_reduce,
    )
    return in_loop_metrics(task_set.label, result)
