"""Task names -> task data: upstream's in-loop tasks read from an installed upstream package, the
pre-formatted oe-eval request files the same packages ship, and JSON Lines task files.

Names: the in-loop labels (`piqa`, `hellaswag`, ... `openbook_qa` also as `openbookqa`; see
`formats.BUILTIN_TASKS`), the MMLU category tasks (`mmlu_stem_var`, ...; see `mmlu.MMLU_TASKS`), and
`{task}_{variant}` for oe-eval request files (e.g. `arc_easy_rc_0shot`), as upstream's
`label_to_task_map` names them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from olmo_cli.data import upstream_assets
from olmo_cli.errors import DataError, UsageError
from olmo_cli.eval.formats import BUILTIN_TASKS, CORE_TASKS, FORMAT_VERSION, Doc
from olmo_cli.eval.mmlu import MMLU_PATH, MMLU_TASKS, SUBJECT_CATEGORY, mmlu_docs
from olmo_cli.eval.package_data import PackageData, read_oe_eval
from olmo_cli.eval.taskfile import TaskData, read_task_file

__all__ = ["INSTALL_HINT", "canonical_name", "known_tasks", "load_tasks"]

INSTALL_HINT = (
    f"install upstream's task data: {upstream_assets.INSTALL_HINT}; or give your own tasks with "
    "--task-file FILE.jsonl"
)
# oe-eval's primary metrics -> ours (upstream METRIC_FROM_OE_EVAL; pmi_dc is never computed in-loop).
OE_EVAL_METRICS = {"acc_raw": "acc", "acc_per_char": "len_norm"}
UNCONDITIONAL_DOC_ID = 1_000_000  # oe-eval's unconditioned requests start here; upstream skips them
_ALIASES = {alias: t.name for t in BUILTIN_TASKS.values() for alias in t.aliases}


def canonical_name(name: str) -> str:
    return _ALIASES.get(name, name)


def known_tasks(data: PackageData | None) -> dict[str, str]:
    """Every task name `--tasks` accepts -> where its data comes from ("" when not installed)."""
    names: dict[str, str] = {}
    for task in BUILTIN_TASKS.values():
        available = data is not None and data.has_hf_dataset(task.hf_path, task.hf_name, task.split)
        names[task.name] = f"{data.describe()} hf_datasets/{task.hf_path}" if available and data else ""
    for task in MMLU_TASKS.values():
        available = data is not None and _has_mmlu(data, task.split)
        names[task.name] = f"{data.describe()} hf_datasets/{MMLU_PATH}" if available and data else ""
    if data is not None:
        for name, directory in data.oe_eval_variants().items():
            if _oe_eval_metric(directory) is not None:
                names[name] = f"{data.describe()} oe_eval_tasks/{directory.parent.name}/{directory.name}"
    return names


def _oe_eval_metric(directory: Path) -> str | None:
    import json

    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        return OE_EVAL_METRICS.get(config["task_config"]["primary_metric"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _unknown(name: str, known: Sequence[str]) -> UsageError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    guess = f"; did you mean {' or '.join(close)}?" if close else ""
    core = ", ".join(CORE_TASKS)
    return UsageError(
        f"unknown task {name!r}{guess}",
        hint=f"known tasks: {core}, and more (`olmo eval --list-tasks`); or use --task-file FILE.jsonl",
    )


def _limited(docs: list[Doc], limit: int | None) -> list[Doc]:
    return docs if limit is None else docs[:limit]


def _load_builtin(name: str, data: PackageData | None, limit: int | None) -> TaskData:
    spec = BUILTIN_TASKS[name]
    if data is None or not data.has_hf_dataset(spec.hf_path, spec.hf_name, spec.split):
        where = f" ({data.describe()} has no hf_datasets/{spec.hf_path})" if data is not None else ""
        raise UsageError(f"no data for task {name!r}{where}", hint=INSTALL_HINT)
    rows, fingerprint = data.hf_rows(spec.hf_path, spec.hf_name, spec.split)
    docs = []
    for i, row in enumerate(rows if limit is None else rows[:limit]):
        try:
            docs.append(spec.to_doc(row))
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise DataError(
                f"{name}: row {i} of {data.hf_split_dir(spec.hf_path, spec.hf_name, spec.split)}: {e!r}"
            ) from e
    source = f"{data.describe()}: hf_datasets/{spec.hf_path}/{spec.hf_name or 'none'}/{spec.split}"
    return TaskData(name, spec.metric, docs, version=f"{FORMAT_VERSION}+{fingerprint}", source=source)


def _has_mmlu(data: PackageData, split: str) -> bool:
    return all(data.has_hf_dataset(MMLU_PATH, subject, split) for subject in SUBJECT_CATEGORY)


def _load_mmlu(name: str, data: PackageData | None, limit: int | None) -> TaskData:
    task = MMLU_TASKS[name]
    if data is None or not _has_mmlu(data, task.split):
        where = f" ({data.describe()} lacks hf_datasets/{MMLU_PATH} subjects)" if data is not None else ""
        raise UsageError(f"no data for task {name!r}{where}", hint=INSTALL_HINT)
    fingerprints: list[str] = []

    def rows_of(subject: str, split: str) -> list[dict]:
        rows, fingerprint = data.hf_rows(MMLU_PATH, subject, split)
        fingerprints.append(fingerprint)
        return rows

    try:
        docs = mmlu_docs(task, rows_of)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise DataError(
            f"{name}: a row of {data.describe()} hf_datasets/{MMLU_PATH} is malformed: {e!r}"
        ) from e
    version = f"{FORMAT_VERSION}+mmlu+{len(fingerprints)}-files"
    return TaskData(
        name,
        task.metric,
        _limited(docs, limit),
        version=version,
        source=f"{data.describe()}: hf_datasets/{MMLU_PATH}",
    )


def _load_oe_eval(name: str, directory: Path, data: PackageData, limit: int | None) -> TaskData:
    config, records = read_oe_eval(directory)
    metric = _oe_eval_metric(directory) or "acc"
    by_doc: dict[int, dict[int, tuple[str, str]]] = {}
    gold: dict[int, int] = {}
    for number, record in enumerate(records, 1):
        try:
            doc_id = int(record["doc_id"])
            if doc_id >= UNCONDITIONAL_DOC_ID:
                continue
            if record.get("request_type", "loglikelihood") != "loglikelihood":
                raise ValueError(f"request_type {record['request_type']!r} is not loglikelihood")
            request = record["request"]
            by_doc.setdefault(doc_id, {})[int(record["idx"])] = (request["context"], request["continuation"])
            gold.setdefault(doc_id, int(record["label"]))
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{directory}/requests.jsonl.gz line {number}: {e!r}") from e
    docs = []
    for doc_id in sorted(by_doc):
        choices = by_doc[doc_id]
        ordered = [choices[i] for i in sorted(choices)]
        docs.append(Doc(tuple(c for c, _ in ordered), tuple(c for _, c in ordered), gold[doc_id], doc_id))
    version = f"oe-eval:{config.get('task_hash', '')}"
    source = f"{data.describe()}: oe_eval_tasks/{directory.parent.name}/{directory.name}"
    return TaskData(name, metric, _limited(docs, limit), version=version, source=source)


def load_tasks(
    names: Sequence[str],
    task_files: Sequence[Path | str] = (),
    *,
    data: PackageData | None,
    limit: int | None = None,
) -> list[TaskData]:
    """The tasks to run, in the order given (names first, then files); `limit` keeps the first N docs.

    Unknown names raise UsageError (exit 2) naming the closest known ones; malformed task files raise
    DataError (exit 3) naming `file:line`.
    """
    oe_eval = data.oe_eval_variants() if data is not None else {}
    known = list(BUILTIN_TASKS) + list(_ALIASES) + list(MMLU_TASKS) + list(oe_eval)
    wanted = [canonical_name(n) for n in names]
    for original, name in zip(names, wanted, strict=True):
        if name not in BUILTIN_TASKS and name not in MMLU_TASKS and name not in oe_eval:
            raise _unknown(original, known)
    tasks: list[TaskData] = []
    for name in dict.fromkeys(wanted):  # a task named twice runs once
        if name in BUILTIN_TASKS:
            tasks.append(_load_builtin(name, data, limit))
        elif name in MMLU_TASKS:
            tasks.append(_load_mmlu(name, data, limit))
        else:
            assert data is not None
            tasks.append(_load_oe_eval(name, oe_eval[name], data, limit))
    for path in task_files:
        task = read_task_file(path)
        task.docs = _limited(task.docs, limit)
        tasks.append(task)
    seen: set[str] = set()
    for task in tasks:
        if task.name in seen:
            raise UsageError(
                f"two tasks are named {task.name!r}",
                hint='give each task file its own name (file name, or {"header": {"name": ...}})',
            )
        seen.add(task.name)
    return tasks
