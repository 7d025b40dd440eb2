"""Multiple-choice tasks as JSON Lines files (`olmo eval --task-file`): the schema, a reader that names
`file:line` for anything wrong, and a writer (so any task, packaged ones included, can be exported and
read back unchanged).

Schema (one JSON object per line; blank lines are ignored):

    {"header": {"name": "mytask", "primary_metric": "len_norm", "version": "1"}}     optional, first line
    {"context": "Question: 2+2=?\\nAnswer:", "continuations": [" 4", " 5"], "gold": 0}
    {"contexts": ["Ann said she", "Bob said she"], "continuation": " was tired.", "gold": 1}

- A document has either `context` (str) with `continuations` (list of 2+ str), or `contexts` (list of
  2+ str) with one `continuation` (str), the WinoGrande shape, or (rarely needed) `choices`, a list of
  2+ `{"context": str, "continuation": str}`. `gold` is the 0-based index of the right choice.
  Optional: `id` (anything), `metadata` (anything, kept out of scoring).
- Strings are used verbatim: a continuation carries its own leading space (" 4"), as upstream's do.
  Context and continuation are tokenized separately and the continuation is scored given the context.
- Header fields: `name` (default: the file name without extensions), `primary_metric` (`acc`,
  `len_norm` or `f1`; default `acc`), `version`, `description`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from olmo_cli.errors import DataError
from olmo_cli.eval.formats import Doc

__all__ = ["METRICS", "TaskData", "read_task_file", "write_task_file"]

METRICS = ("acc", "len_norm", "f1")
_DOC_KEYS = {"context", "contexts", "continuation", "continuations", "choices", "gold", "id", "metadata"}
_HEADER_KEYS = {"name", "primary_metric", "version", "description"}


@dataclass
class TaskData:
    """A task's documents and what to report for it, wherever they came from."""

    name: str
    primary_metric: str
    docs: list[Doc]
    version: str = ""
    source: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def task_name_for(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson"):
        name = name.removesuffix(suffix)
    return name


def read_task_file(path: Path | str) -> TaskData:
    """The task in a JSON Lines file; DataError (exit 3) naming `file:line` for a malformed line."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            import gzip

            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read task file {path}: {e}") from e
    header: dict[str, Any] = {}
    docs: list[Doc] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(where, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise _bad(where, f"expected a JSON object, found {type(record).__name__}")
        if "header" in record:
            if docs or header:
                raise _bad(where, "a header is only allowed on the first line")
            header = _header(record, where)
            continue
        docs.append(_doc(record, where))
    if not docs:
        raise DataError(f"task file {path} holds no documents", hint=_HINT)
    return TaskData(
        name=str(header.get("name") or task_name_for(path)),
        primary_metric=str(header.get("primary_metric") or "acc"),
        docs=docs,
        version=str(header.get("version", "")),
        source=str(path),
        description=str(header.get("description", "")),
    )


_HINT = (
    'each line is {"context": str, "continuations": [str, ...], "gold": int} or '
    '{"contexts": [str, ...], "continuation": str, "gold": int}; see `olmo eval --help`'
)


def _bad(where: str, what: str) -> DataError:
    return DataError(f"{where}: {what}", hint=_HINT)


def _header(record: dict[str, Any], where: str) -> dict[str, Any]:
    header = record["header"]
    if len(record) != 1 or not isinstance(header, dict):
        raise _bad(
            where, 'a header line is {"header": {"name": ..., "primary_metric": ...}} and nothing else'
        )
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        raise _bad(
            where, f"unknown header field(s) {', '.join(unknown)} (known: {', '.join(sorted(_HEADER_KEYS))})"
        )
    metric = header.get("primary_metric")
    if metric is not None and metric not in METRICS:
        raise _bad(where, f"primary_metric {metric!r} is not one of {', '.join(METRICS)}")
    if "name" in header and (not isinstance(header["name"], str) or not header["name"]):
        raise _bad(where, "header name must be a non-empty string")
    return header


def _strings(value: Any, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(where, f"`{key}` must be a list of strings")
    if len(value) < 2:
        raise _bad(where, f"`{key}` needs at least 2 choices, found {len(value)}")
    return value


def _pairs(value: Any, where: str) -> tuple[list[str], list[str]]:
    ok = isinstance(value, list) and all(
        isinstance(c, dict)
        and set(c) == {"context", "continuation"}
        and all(isinstance(v, str) for v in c.values())
        for c in value
    )
    if not ok:
        raise _bad(where, '`choices` must be a list of {"context": str, "continuation": str}')
    if len(value) < 2:
        raise _bad(where, f"`choices` needs at least 2 choices, found {len(value)}")
    return [c["context"] for c in value], [c["continuation"] for c in value]


def _doc(record: dict[str, Any], where: str) -> Doc:
    unknown = sorted(set(record) - _DOC_KEYS)
    if unknown:
        raise _bad(where, f"unknown field(s) {', '.join(unknown)}")
    keys = set(record) & {"context", "contexts", "choices", "continuation", "continuations"}
    if keys == {"choices"}:
        contexts, continuations = _pairs(record["choices"], where)
    elif keys == {"context", "continuations"}:
        context = record["context"]
        if not isinstance(context, str):
            raise _bad(where, "`context` must be a string")
        continuations = _strings(record["continuations"], "continuations", where)
        contexts = [context] * len(continuations)
    elif keys == {"contexts", "continuation"}:
        continuation = record["continuation"]
        if not isinstance(continuation, str):
            raise _bad(where, "`continuation` must be a string")
        contexts = _strings(record["contexts"], "contexts", where)
        continuations = [continuation] * len(contexts)
    else:
        found = ", ".join(sorted(keys)) or "none of them"
        raise _bad(
            where,
            f"a document has `context` + `continuations`, `contexts` + `continuation`, or `choices` "
            f"(found {found})",
        )
    if any(not c for c in continuations):
        raise _bad(where, "a continuation is empty: there is nothing to score")
    gold = record.get("gold")
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise _bad(where, f"`gold` must be an integer choice index, found {gold!r}")
    if not 0 <= gold < len(continuations):
        raise _bad(where, f"`gold` {gold} is out of range for {len(continuations)} choices")
    return Doc(tuple(contexts), tuple(continuations), gold, record.get("id"))


def doc_record(doc: Doc) -> dict[str, Any]:
    """The most compact schema form of a document."""
    record: dict[str, Any] = {}
    if doc.id is not None:
        record["id"] = doc.id
    if len(set(doc.contexts)) == 1:
        record |= {"context": doc.contexts[0], "continuations": list(doc.continuations)}
    elif len(set(doc.continuations)) == 1:
        record |= {"contexts": list(doc.contexts), "continuation": doc.continuations[0]}
    else:
        pairs = zip(doc.contexts, doc.continuations, strict=True)
        record["choices"] = [{"context": ctx, "continuation": cont} for ctx, cont in pairs]
    record["gold"] = doc.gold
    return record


def write_task_file(task: TaskData, path: Path | str) -> None:
    """Writes `task` in the schema above (atomically); `read_task_file` gives back the same task."""
    from olmo_cli.atomic import atomic_write_text

    header = {"name": task.name, "primary_metric": task.primary_metric}
    if task.version:
        header["version"] = task.version
    if task.description:
        header["description"] = task.description
    lines = [json.dumps({"header": header}, ensure_ascii=False)]
    lines += [json.dumps(doc_record(doc), ensure_ascii=False) for doc in task.docs]
    atomic_write_text(path, "\n".join(lines) + "\n")
