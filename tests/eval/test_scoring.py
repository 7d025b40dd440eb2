"""The scorer against plain forward passes: packing contexts, sharing rows, batching, truncation and the
distributed split must not change any log-likelihood."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from olmo_cli.eval.formats import Doc
from olmo_cli.eval.requests import build_requests
from olmo_cli.eval.scoring import plan_rows, score_requests
from tests._fixtures import tiny_model
from tests.eval._helpers import reference_loglikelihood

EOS, PAD = 0, 1


def encode(texts: list[str]) -> list[list[int]]:
    """A character-level stand-in tokenizer (ids 3..62): enough to build requests of known shape."""
    return [[3 + ord(ch) % 60 for ch in text] for text in texts]


DOCS = [
    Doc.shared_context("the cat sat", [" on", " by the mat", " on the mat", " on"], 2),  # repeats, prefixes
    Doc.shared_context("yes or no?", ["y", "n"], 0),  # one-token continuations: no segment at all
    Doc(("Ann said she", "Bob said she"), (" was tired.", " was tired."), 1),  # WinoGrande shape
    Doc.shared_context("", [" a", " b"], 1),  # empty context: EOS stands in
    Doc.shared_context("x" * 40, [" long continuation here", " z"], 0),  # cut from the left at max_length
    Doc.shared_context("q", [" r", " s t u"], 1),
]
MAX_LENGTH = 24


def _reference(model, docs, max_length):
    out = []
    for doc in docs:
        for context, continuation in zip(doc.contexts, doc.continuations, strict=True):
            ctx = encode([context])[0] or [EOS]
            tokens = (ctx + encode([continuation])[0])[-(max_length + 1) :]
            n = min(len(encode([continuation])[0]), len(tokens) - 1)
            out.append(reference_loglikelihood(model, tokens[:-n], tokens[-n:]))
    return np.array([ll for ll, _ in out]), np.array([g for _, g in out])


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3, init_std=0.3)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_loglikelihoods_equal_plain_forward_passes(model, batch_size):
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    assert max(len(r.tokens) for r in reqs.requests) == MAX_LENGTH + 1  # truncation happened
    scores = score_requests(model, reqs.requests, batch_size=batch_size, pad_token_id=PAD)
    expected_ll, expected_greedy = _reference(model, DOCS, MAX_LENGTH)
    np.testing.assert_allclose(scores.loglikelihood, expected_ll, rtol=1e-5, atol=1e-4)
    assert scores.greedy.tolist() == expected_greedy.tolist()


def test_full_logits_path_and_untied_scaled_output(model):
    untied = tiny_model(seed=4, weight_tying=False, scale_logits=True, init_std=0.3)
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    for m in (model, untied):
        expected, _ = _reference(m, DOCS, MAX_LENGTH)
        for full in (False, True):
            scores = score_requests(m, reqs.requests, batch_size=4, pad_token_id=PAD, full_logits=full)
            np.testing.assert_allclose(scores.loglikelihood, expected, rtol=1e-5, atol=1e-4)


def test_contexts_are_read_once():
    reqs = build_requests(DOCS[:2], encode, EOS, MAX_LENGTH)
    rows = plan_rows(reqs.requests)
    assert len(rows) == 2
    first, second = rows
    # " on" appears twice but is one segment; the one-token continuations of the second add nothing.
    assert len(first.reads) == 4 and max(first.segments) == 3
    assert second.tokens == encode(["yes or no?"])[0] and not second.packed


def test_ranks_split_the_work_and_sum_to_the_whole(model):
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    whole = score_requests(model, reqs.requests, batch_size=2, pad_token_id=PAD)
    parts = []
    for rank in range(2):  # a no-op all_reduce: each rank keeps only what it computed
        parts.append(
            score_requests(
                model,
                reqs.requests,
                batch_size=2,
                pad_token_id=PAD,
                rank=rank,
                world_size=2,
                all_reduce=lambda t: None,
            )
        )
    assert all(np.any(p.loglikelihood == 0) for p in parts)  # neither rank did everything
    np.testing.assert_allclose(
        parts[0].loglikelihood + parts[1].loglikelihood, whole.loglikelihood, rtol=1e-6
    )


def test_progress_counts_every_request(model):
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    seen = []
    score_requests(model, reqs.requests, batch_size=2, pad_token_id=PAD, progress=seen.append)
    assert sum(seen) == len(reqs.requests)


def test_bf16_autocast_stays_close(model):
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    fp32 = score_requests(model, reqs.requests, batch_size=8, pad_token_id=PAD)
    bf16 = score_requests(model, reqs.requests, batch_size=8, pad_token_id=PAD, autocast_dtype=torch.bfloat16)
    np.testing.assert_allclose(bf16.loglikelihood, fp32.loglikelihood, rtol=0.05, atol=0.5)
