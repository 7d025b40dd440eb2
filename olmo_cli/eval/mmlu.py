"""MMLU as upstream's in-loop evaluators pose it (docs/format.md §9.3): one task per category (stem,
humanities, social_sciences, other) over the subjects of `hails/mmlu_no_train`, in three forms:

- `mmlu_{category}_var`: each question once per prompt variant (no prefix; the instruction; the
  instruction plus the first 1..5 examples of the subject's `dev` split), the choices' text as
  continuations, validation split;
- `mmlu_{category}_mc_5shot`: the question with lettered choices "A. ..." to "D. ...", the instruction
  and 5 lettered examples, continuations " A" to " D", validation split;
- `mmlu_{category}_mc_5shot_test`: the same on the test split.

The metric is len_norm throughout (for the one-letter continuations it ranks as acc does).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from olmo_cli.eval.formats import Doc

__all__ = ["MMLU_PATH", "MMLU_TASKS", "SUBJECT_CATEGORY", "MmluTask", "mmlu_docs"]

MMLU_PATH = "hails/mmlu_no_train"
LETTERS = ("A", "B", "C", "D")

# MMLU's subject -> category table (Hendrycks et al.: subjects grouped into subcategories, those into
# four categories).
_CATEGORY_SUBJECTS = {
    "stem": (
        "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
        "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
        "high_school_mathematics high_school_physics high_school_statistics machine_learning"
    ),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions"
    ),
    "social_sciences": (
        "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
        "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
        "public_relations security_studies sociology us_foreign_policy"
    ),
    "other": (
        "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging management "
        "marketing medical_genetics miscellaneous nutrition professional_accounting professional_medicine "
        "virology"
    ),
}
SUBJECT_CATEGORY: dict[str, str] = {
    subject: category for category, subjects in _CATEGORY_SUBJECTS.items() for subject in subjects.split()
}
VAR_PROMPTS: tuple[str | None, ...] = (None, "inst", "inst+1", "inst+2", "inst+3", "inst+4", "inst+5")


@dataclass(frozen=True)
class MmluTask:
    name: str
    category: str
    split: str
    prompts: tuple[str | None, ...]
    mc_labels: bool
    metric: str = "len_norm"

    def subjects(self) -> list[str]:
        return sorted(s for s, c in SUBJECT_CATEGORY.items() if c == self.category)


MMLU_TASKS: dict[str, MmluTask] = {}
for _category in _CATEGORY_SUBJECTS:
    for _task in (
        MmluTask(f"mmlu_{_category}_var", _category, "validation", VAR_PROMPTS, mc_labels=False),
        MmluTask(f"mmlu_{_category}_mc_5shot", _category, "validation", ("inst+5",), mc_labels=True),
        MmluTask(f"mmlu_{_category}_mc_5shot_test", _category, "test", ("inst+5",), mc_labels=True),
    ):
        MMLU_TASKS[_task.name] = _task


def _question(row: Mapping[str, Any], mc_labels: bool) -> str:
    """The question block: "Question: q\\nAnswer:", or with lettered choices "q\\nA. c\\n...Answer:"."""
    if not mc_labels:
        return "Question: " + row["question"].strip() + "\nAnswer:"
    choices = "".join(
        f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, row["choices"], strict=False)
    )
    return row["question"].strip() + "\n" + choices + "Answer:"


def _prefix(prompt: str | None, subject: str, dev: list[Mapping[str, Any]], mc_labels: bool) -> str:
    if prompt is None:
        return ""
    prefix = ""
    if "inst" in prompt:
        topic = subject.replace("_", " ")
        prefix = f"The following are multiple choice questions (with answers) about {topic}:\n\n"
    shots = re.findall(r"\+(\d+)", prompt)
    for example in dev[: int(shots[0])] if shots else []:
        gold = int(example["answer"])
        answer = LETTERS[gold] if mc_labels else example["choices"][gold]
        prefix += _question(example, mc_labels) + " " + answer + "\n\n"
    return prefix


def mmlu_docs(task: MmluTask, rows_of: Callable[[str, str], list[dict[str, Any]]]) -> list[Doc]:
    """The task's documents: for each subject (alphabetical), each row, each prompt variant.
    `rows_of(subject, split)` gives a subject's rows."""
    docs: list[Doc] = []
    for subject in task.subjects():
        dev = rows_of(subject, "dev") if any(p is not None and "+" in p for p in task.prompts) else []
        for row in rows_of(subject, task.split):
            choices = list(row["choices"])
            continuations = (
                [" " + LETTERS[i] for i in range(len(choices))]
                if task.mc_labels
                else [" " + c for c in choices]
            )
            for prompt in task.prompts:
                context = _prefix(prompt, subject, dev, task.mc_labels) + _question(row, task.mc_labels)
                docs.append(Doc.shared_context(context, continuations, int(row["answer"]), len(docs)))
    return docs
