"""Upstream OLMo's in-loop downstream tasks: how a dataset row becomes a multiple-choice document, and
which metric upstream reports for each (docs/format.md §9.3; the `label_to_task_map` of
allenai/OLMo `olmo/eval/downstream.py`).

Each document is a list of (context, continuation) choices and the index of the gold one. Most tasks
share one context and vary the continuation; WinoGrande varies the context and shares the continuation.
Continuations carry their leading space, exactly as upstream builds them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BUILTIN_TASKS", "CORE_TASKS", "Doc", "TaskFormat", "hellaswag_pre", "sentence_pre"]

FORMAT_VERSION = "olmo-in-loop-1"  # bump when a prompt format below changes


@dataclass(frozen=True)
class Doc:
    contexts: tuple[str, ...]  # one per choice
    continuations: tuple[str, ...]  # one per choice
    gold: int
    id: Any = None

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.continuations):
            raise ValueError("a document needs one context per continuation")
        if not 0 <= self.gold < len(self.continuations):
            raise ValueError(f"gold {self.gold} is not a choice index (0..{len(self.continuations) - 1})")

    @classmethod
    def shared_context(cls, context: str, continuations: list[str], gold: int, id: Any = None) -> Doc:
        return cls((context,) * len(continuations), tuple(continuations), gold, id)

    @property
    def num_choices(self) -> int:
        return len(self.continuations)


@dataclass(frozen=True)
class TaskFormat:
    name: str
    metric: str  # the metric upstream reports: "acc", "len_norm" or "f1"
    hf_path: str
    hf_name: str | None
    to_doc: Callable[[dict[str, Any]], Doc]
    split: str = "validation"
    aliases: tuple[str, ...] = ()


def hellaswag_pre(text: str) -> str:
    """HellaSwag's clean-up: WikiHow `[title]` markers become sentence breaks, other brackets go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def sentence_pre(text: str) -> str:
    """Undoes the tokenized spacing of GLUE sentences (MRPC, SST-2)."""
    for before, after in ((" n't", "n't"), (" )", ")"), ("( ", "("), ('" ', '"'), (' "', '"')):
        text = text.replace(before, after)
    return re.sub(r" (['.,])", r"\1", text)


def _sp(texts: list[str]) -> list[str]:
    return [" " + t for t in texts]


def _piqa(d: dict) -> Doc:
    return Doc.shared_context("Question: " + d["goal"] + "\nAnswer:", _sp([d["sol1"], d["sol2"]]), d["label"])


def _hellaswag(d: dict) -> Doc:
    context = hellaswag_pre(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
    return Doc.shared_context(context, _sp([hellaswag_pre(e) for e in d["endings"]]), int(d["label"]))


def _winogrande(d: dict) -> Doc:
    blank = d["sentence"].index("_")
    contexts = tuple(d["sentence"][:blank] + option for option in (d["option1"], d["option2"]))
    continuation = " " + d["sentence"][blank + 1 :].strip()
    return Doc(contexts, (continuation, continuation), int(d["answer"]) - 1)


def _openbookqa(d: dict) -> Doc:
    gold = ["A", "B", "C", "D"].index(d["answerKey"].strip())
    return Doc.shared_context(d["question_stem"], _sp(d["choices"]["text"]), gold)


def _boolq(d: dict) -> Doc:
    context = d["passage"] + "\nQuestion: " + d["question"] + "?\nAnswer:"
    return Doc.shared_context(context, [" yes", " no"], 0 if d["answer"] else 1)


def _sciq(d: dict) -> Doc:
    context = d["support"].strip() + "\nQuestion: " + d["question"] + "\nAnswer:"
    answers = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
    return Doc.shared_context(context, _sp(answers), 3)


def _arc(d: dict) -> Doc:
    key = {"1": "A", "2": "B", "3": "C", "4": "D", "5": "E"}.get(d["answerKey"], d["answerKey"])
    gold = ["A", "B", "C", "D", "E"].index(key)
    return Doc.shared_context("Question: " + d["question"] + "\nAnswer:", _sp(d["choices"]["text"]), gold)


def _copa(d: dict) -> Doc:
    connector = "because" if d["question"] == "cause" else "therefore"
    context = d["premise"].strip()[:-1] + " " + connector  # the premise's final period goes
    choices = [c[0].lower() + c[1:] for c in (d["choice1"], d["choice2"])]
    return Doc.shared_context(context, _sp(choices), d["label"])


def _rte(d: dict) -> Doc:
    context = d["sentence1"] + "\nQuestion: " + d["sentence2"] + " True or False?\nAnswer:"
    return Doc.shared_context(context, [" True", " False"], d["label"])


def _cb(d: dict) -> Doc:
    context = d["premise"] + "\nQuestion: " + d["hypothesis"] + ". True, False or Neither?\nAnswer:"
    return Doc.shared_context(context, [" True", " False", " Neither"], d["label"])


def _mrpc(d: dict) -> Doc:
    context = (
        "Sentence 1: " + sentence_pre(d["sentence1"]) + "\nSentence 2: " + sentence_pre(d["sentence2"])
        + "\nQuestion: Do both sentences mean the same thing?\nAnswer:"
    )  # fmt: skip
    return Doc.shared_context(context, [" yes", " no"], 0 if d["label"] else 1)


def _sst2(d: dict) -> Doc:
    context = sentence_pre(d["sentence"]) + "\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return Doc.shared_context(context, [" negative", " positive"], d["label"])


def _social_iqa(d: dict) -> Doc:
    context = "Question: " + d["context"] + " " + d["question"] + "\nAnswer:"
    return Doc.shared_context(context, _sp([d["answerA"], d["answerB"], d["answerC"]]), int(d["label"]) - 1)


_ALL = [
    TaskFormat("arc_easy", "acc", "ai2_arc", "ARC-Easy", _arc),
    TaskFormat("arc_challenge", "len_norm", "ai2_arc", "ARC-Challenge", _arc),
    TaskFormat("boolq", "acc", "boolq", None, _boolq),
    TaskFormat("copa", "acc", "super_glue", "copa", _copa),
    TaskFormat("hellaswag", "len_norm", "hellaswag", None, _hellaswag),
    TaskFormat("openbookqa", "len_norm", "openbookqa", "main", _openbookqa, aliases=("openbook_qa",)),
    TaskFormat("piqa", "len_norm", "piqa", "plain_text", _piqa),
    TaskFormat("sciq", "acc", "sciq", None, _sciq),
    TaskFormat("winogrande", "acc", "winogrande", "winogrande_xl", _winogrande),
    # Also upstream in-loop tasks (not among the nine of the OLMo reports):
    TaskFormat("rte", "len_norm", "glue", "rte", _rte),
    TaskFormat("commitment_bank", "acc", "super_glue", "cb", _cb),
    TaskFormat("mrpc", "f1", "glue", "mrpc", _mrpc),
    TaskFormat("sst2", "acc", "glue", "sst2", _sst2),
    TaskFormat("commonsense_qa", "len_norm", "tau/commonsense_qa", None, _arc),
    TaskFormat("social_iqa", "len_norm", "social_i_qa", None, _social_iqa),
]
BUILTIN_TASKS: dict[str, TaskFormat] = {t.name: t for t in _ALL}
CORE_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL[:9])
