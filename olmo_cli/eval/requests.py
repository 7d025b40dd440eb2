"""Documents -> token-level scoring requests, the way upstream's in-loop evaluators build them
(docs/format.md §9.2):

- context and continuation are tokenized separately, with no special tokens;
- the model reads `(context + continuation)[:-1]`, cut from the left to `max_length` tokens (2048,
  fixed upstream), and the continuation's log-likelihood is summed over its own positions;
- len_norm divides by the continuation's length in characters without its leading space.

Two cases upstream never meets get a defined answer here: an empty context is replaced by the EOS
token (as lm-evaluation-harness does), and a continuation longer than the window is scored on its
last `max_length` tokens only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from olmo_cli.eval.formats import Doc

__all__ = ["MAX_LENGTH", "Request", "TaskRequests", "build_requests", "cont_chars"]

MAX_LENGTH = 2048  # upstream's model_ctx_len for downstream tasks, whatever the model's sequence length

Encoder = Callable[[list[str]], list[list[int]]]


@dataclass(frozen=True)
class Request:
    """`tokens[:-1]` is the model input; the last `n_cont` tokens are the continuation scored."""

    tokens: tuple[int, ...]
    n_cont: int


@dataclass
class TaskRequests:
    requests: list[Request]
    doc: np.ndarray  # [n] int: the document of each request
    choice: np.ndarray  # [n] int: the choice index within its document
    chars: np.ndarray  # [n] int: len_norm's denominator per request
    gold: np.ndarray  # [docs] int


def cont_chars(continuation: str) -> int:
    """Characters that len_norm divides by: upstream's `len(continuation) - 1`, i.e. without the leading
    space every upstream continuation has. A continuation with no leading whitespace keeps all its
    characters, and the count is at least 1 (a lone " " would otherwise divide by zero)."""
    n = len(continuation) - 1 if continuation[:1].isspace() else len(continuation)
    return max(n, 1)


def build_requests(
    docs: Sequence[Doc], encode: Encoder, eos_token_id: int, max_length: int = MAX_LENGTH
) -> TaskRequests:
    """One request per (document, choice); every distinct string is tokenized once."""
    strings = list(dict.fromkeys(s for doc in docs for s in (*doc.contexts, *doc.continuations)))
    ids = dict(zip(strings, encode(strings), strict=True))
    requests, doc_index, choice_index, chars = [], [], [], []
    for d, doc in enumerate(docs):
        for c, (context, continuation) in enumerate(zip(doc.contexts, doc.continuations, strict=True)):
            ctx = ids[context] or [eos_token_id]
            cont = ids[continuation]
            tokens = (ctx + cont)[-(max_length + 1) :]
            requests.append(Request(tuple(tokens), min(len(cont), len(tokens) - 1)))
            doc_index.append(d)
            choice_index.append(c)
            chars.append(cont_chars(continuation))
    return TaskRequests(
        requests,
        np.asarray(doc_index, dtype=np.int64),
        np.asarray(choice_index, dtype=np.int64),
        np.asarray(chars, dtype=np.int64),
        np.asarray([doc.gold for doc in docs], dtype=np.int64),
    )
