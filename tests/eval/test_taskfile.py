"""JSON Lines task files: a written task reads back unchanged, and every malformed line is a DataError
(exit 3) naming file:line and what is wrong."""

from __future__ import annotations

import json

import pytest

from olmo_cli.errors import DataError
from olmo_cli.eval.formats import Doc
from olmo_cli.eval.taskfile import TaskData, read_task_file, write_task_file


def test_round_trip_of_every_document_shape(tmp_path):
    docs = [
        Doc.shared_context("Question: 2+2=?\nAnswer:", [" 4", " 5", " ünï"], 0, id="q1"),
        Doc(("Ann said she", "Bob said she"), (" was tired.", " was tired."), 1),
        Doc(("a", "b"), (" c", " d"), 1, id={"any": ["json"]}),  # different contexts and continuations
        Doc.shared_context("", [" x", "y"], 1),  # empty context, continuation without a leading space
    ]
    task = TaskData("mine", "len_norm", docs, version="3", description="a test")
    path = tmp_path / "task.jsonl"
    write_task_file(task, path)
    back = read_task_file(path)
    assert (back.name, back.primary_metric, back.version, back.description) == (
        "mine",
        "len_norm",
        "3",
        "a test",
    )
    assert back.docs == docs
    lines = path.read_text().splitlines()
    assert json.loads(lines[1]) == {
        "id": "q1",
        "context": "Question: 2+2=?\nAnswer:",
        "continuations": [" 4", " 5", " ünï"],
        "gold": 0,
    }
    assert json.loads(lines[2]) == {
        "contexts": ["Ann said she", "Bob said she"],
        "continuation": " was tired.",
        "gold": 1,
    }


def test_defaults_without_header(tmp_path):
    path = tmp_path / "quiz.v2.jsonl"
    path.write_text('{"context": "c", "continuations": [" a", " b"], "gold": 1}\n\n')
    task = read_task_file(path)
    assert (task.name, task.primary_metric, len(task.docs)) == ("quiz.v2", "acc", 1)


GOOD = '{"context": "c", "continuations": [" a", " b"], "gold": 0}'
BAD_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found list"),
    ('{"context": "c", "continuations": [" a", " b"]}', "`gold` must be an integer"),
    ('{"context": "c", "continuations": [" a", " b"], "gold": true}', "`gold` must be an integer"),
    ('{"context": "c", "continuations": [" a", " b"], "gold": 2}', "`gold` 2 is out of range for 2 choices"),
    ('{"context": "c", "continuations": [" a", " b"], "gold": -1}', "out of range"),
    ('{"context": "c", "continuations": [" a"], "gold": 0}', "needs at least 2 choices"),
    ('{"context": "c", "continuations": [" a", ""], "gold": 0}', "a continuation is empty"),
    ('{"context": "c", "continuations": " a b", "gold": 0}', "must be a list of strings"),
    ('{"context": 3, "continuations": [" a", " b"], "gold": 0}', "`context` must be a string"),
    ('{"context": "c", "continuation": " a", "gold": 0}', "found context, continuation"),
    ('{"contexts": ["a", "b"], "continuations": [" a", " b"], "gold": 0}', "found contexts, continuations"),
    ('{"context": "c", "continuations": [" a", " b"], "gold": 0, "answer": 1}', "unknown field(s) answer"),
    ('{"choices": [{"context": "a"}], "gold": 0}', "`choices` must be a list of"),
    ('{"header": {"name": "x"}}', "a header is only allowed on the first line"),
]


@pytest.mark.parametrize(("line", "what"), BAD_LINES, ids=[w for _, w in BAD_LINES])
def test_malformed_line_names_file_line_and_problem(tmp_path, line, what):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(DataError) as info:
        read_task_file(path)
    assert info.value.exit_code == 3
    assert info.value.message.startswith(f"{path}:3: ")
    assert what in info.value.message


@pytest.mark.parametrize(
    ("header", "what"),
    [
        ('{"header": {"primary_metric": "pmi"}}', "primary_metric 'pmi' is not one of acc, len_norm, f1"),
        ('{"header": {"nam": "x"}}', "unknown header field(s) nam"),
        ('{"header": {"name": ""}}', "header name must be a non-empty string"),
        ('{"header": {}, "gold": 0}', "a header line is"),
    ],
)
def test_malformed_header(tmp_path, header, what):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{header}\n{GOOD}\n")
    with pytest.raises(DataError, match=f"{path}:1: ") as info:
        read_task_file(path)
    assert what in info.value.message


def test_empty_or_unreadable_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no documents"):
        read_task_file(empty)
    with pytest.raises(DataError, match="cannot read task file"):
        read_task_file(tmp_path / "missing.jsonl")
