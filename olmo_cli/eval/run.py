"""`run_eval(request, events=...)`: the one entry point of `olmo eval` (docs/architecture.md rule 11).

The sequence, in the order `run_eval` performs it:
    request checked -> task data loaded (bad names and files fail here, before torch and the model)
    -> device and dtype -> checkpoint read -> tokenizer -> perplexity sources opened (raw text is
    tokenized now) -> model built -> perplexity per source -> each task -> lm-eval harness -> EvalRun
Progress goes to `events` as the dataclasses of eval/events.py; nothing here prints. Writing the
results file and rendering them is the caller's (eval/results.py writes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.errors import CheckpointError, UsageError
from olmo_cli.eval.events import EvalEvents, Message, StageDone, StageProgress, StageStarted

if TYPE_CHECKING:
    import torch

    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.eval.downstream import TaskResult
    from olmo_cli.eval.perplexity_sources import PplResult, PplSource
    from olmo_cli.eval.results import EvalRun
    from olmo_cli.eval.taskfile import TaskData

__all__ = ["EvalRequest", "run_eval"]


@dataclass
class EvalRequest:
    """What to evaluate and how. With no tasks, task files, perplexity or harness, the core tasks run."""

    checkpoint: Path
    perplexity: bool = False
    data: Sequence[str] = ()  # perplexity DATA: PATH or LABEL=PATH
    tasks: Sequence[str] = ()
    task_files: Sequence[Path] = ()
    harness: Sequence[str] = ()
    harness_include: Path | None = None
    limit: int | None = None  # documents per task
    batch_size: int = 32
    max_tokens: int | None = None  # perplexity: predicted tokens per source at most
    seq_len: int | None = None  # perplexity window; None: the model's max_sequence_length
    max_length: int = 2048  # tasks: context window in tokens
    device: str | None = None  # None: cuda when there is one
    dtype: str = "auto"  # auto, fp32/float32, bf16/bfloat16, fp16/float16 (world.canonical_dtype)


def _ignore(event: object) -> None:
    pass


def run_eval(request: EvalRequest, events: EvalEvents = _ignore) -> EvalRun:
    """Evaluates `request.checkpoint`; returns every number with what produced it (eval/results.py)."""
    _check(request)
    tasks = _selected_tasks(request)
    from olmo_cli.load.build import load_model, load_tokenizer
    from olmo_cli.load.read import read_checkpoint
    from olmo_cli.world import compute_dtype, pick_device

    where = pick_device(request.device)
    dtype = compute_dtype(request.dtype, where)
    found = read_checkpoint(request.checkpoint)
    for warning in found.warnings:
        events(Message(warning))
    tokenizer = load_tokenizer(found)
    sources = _open_sources(request, found, tokenizer)
    model = load_model(found, device=where, dtype=dtype)
    started = time.perf_counter()
    result = _new_run(request, found, tokenizer, where, dtype)
    result.perplexity = _run_perplexity(request, model, tokenizer, sources, found, events)
    result.tasks = _run_tasks(request, model, tokenizer, tasks, events)
    if request.harness:
        from olmo_cli.eval.harness import harness_lm, run_harness

        lm = harness_lm(model, tokenizer, batch_size=request.batch_size)
        result.harness = run_harness(
            lm, list(request.harness), include_path=request.harness_include, limit=request.limit
        )
    result.seconds = time.perf_counter() - started
    return result


def _check(req: EvalRequest) -> None:
    if not req.checkpoint.exists():  # before the task data, which would otherwise be the first complaint
        raise CheckpointError(f"checkpoint {req.checkpoint} does not exist", hint="check the path")
    if req.data and not req.perplexity:
        raise UsageError(
            f"{req.data[0]} is given but --perplexity is not", hint="olmo eval CKPT --perplexity DATA..."
        )
    if req.perplexity and not req.data:
        raise UsageError("--perplexity needs DATA to evaluate", hint="olmo eval CKPT --perplexity DATA...")


def _selected_tasks(req: EvalRequest) -> list[TaskData]:
    """Task data, loaded (and checked) before the slower model load."""
    from olmo_cli.eval.formats import CORE_TASKS
    from olmo_cli.eval.harness import INSTALL_HINT, harness_available
    from olmo_cli.eval.package_data import find_package_data
    from olmo_cli.eval.tasks import load_tasks

    names = list(req.tasks)
    if not names and not req.task_files and not req.perplexity and not req.harness:
        names = list(CORE_TASKS)
    if req.harness and not harness_available():
        raise UsageError("--harness needs lm-evaluation-harness, which is not installed", hint=INSTALL_HINT)
    if req.harness and req.harness_include is None:
        from olmo_cli.eval.harness import check_harness_data_reachable

        check_harness_data_reachable()  # offline with nothing cached: say so before the model loads
    data = find_package_data() if names else None
    return load_tasks(names, list(req.task_files), data=data, limit=req.limit)


def _new_run(
    req: EvalRequest,
    found: CheckpointWeights,
    tokenizer: ResolvedTokenizer,
    where: torch.device,
    dtype: torch.dtype,
) -> EvalRun:
    from olmo_cli.eval.results import EvalRun

    settings: dict[str, Any] = {
        "batch_size": req.batch_size,
        "limit": req.limit,
        "max_length": req.max_length,
        "max_tokens": req.max_tokens,
        "seq_len": req.seq_len or found.config.model.max_sequence_length,
        "device": str(where),
        "dtype": str(dtype).removeprefix("torch."),
    }
    return EvalRun(
        checkpoint=str(found.path),
        checkpoint_kind=found.kind,
        model_config=found.config.model.model_dump(mode="json"),
        tokenizer=tokenizer.identity.as_dict(),
        settings=settings,
    )


def _open_sources(
    req: EvalRequest, found: CheckpointWeights, tokenizer: ResolvedTokenizer
) -> list[PplSource]:
    from olmo_cli.eval.perplexity_sources import open_source

    sources = [open_source(item, tokenizer, found.config.data.memmap_dtype) for item in req.data]
    labels = [s.label for s in sources]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise UsageError(f"two DATA share the label {duplicated[0]!r}", hint="name them: LABEL=PATH")
    return sources


class _Counter:
    """Turns a scorer's "n more done" callbacks into cumulative StageProgress events."""

    def __init__(self, events: EvalEvents) -> None:
        self.events, self.done = events, 0

    def __call__(self, n: int) -> None:
        self.done += n
        self.events(StageProgress(self.done))


def _run_perplexity(
    req: EvalRequest,
    model: Any,
    tokenizer: ResolvedTokenizer,
    sources: list[PplSource],
    found: CheckpointWeights,
    events: EvalEvents,
) -> list[PplResult]:
    from olmo_cli.eval.perplexity_sources import evaluate_source, predicted_tokens, token_byte_lengths

    if not sources:
        return []
    seq_len = req.seq_len or found.config.model.max_sequence_length
    byte_lengths = token_byte_lengths(tokenizer, found.config.model.padded_vocab_size)
    results = []
    for number, source in enumerate(sources, 1):
        total = predicted_tokens(source, seq_len, req.max_tokens)
        events(StageStarted("perplexity", source.label, number, len(sources), total, "tokens"))
        result = evaluate_source(
            model,
            source,
            byte_lengths,
            seq_len=seq_len,
            batch_size=req.batch_size,
            max_tokens=req.max_tokens,
            progress=_Counter(events),
        )
        results.append(result)
        events(StageDone(source.label))
    return results


def _run_tasks(
    req: EvalRequest, model: Any, tokenizer: ResolvedTokenizer, tasks: list[TaskData], events: EvalEvents
) -> list[TaskResult]:
    from olmo_cli.eval.downstream import evaluate_prepared, prepare_task

    results = []
    for number, task in enumerate(tasks, 1):
        prepared = prepare_task(task, tokenizer, req.max_length)
        total = len(prepared.requests.requests)
        events(StageStarted("task", task.name, number, len(tasks), total, "requests"))
        results.append(
            evaluate_prepared(model, prepared, batch_size=req.batch_size, progress=_Counter(events))
        )
        events(StageDone(task.name))
    return results
