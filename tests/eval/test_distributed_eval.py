"""Downstream scoring in a two-process FSDP job (gloo, CPU), as the training loop runs it: each rank
scores its share of the batches and the sum over ranks equals one process scoring everything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from olmo_cli.eval.requests import build_requests
from olmo_cli.eval.scoring import score_requests
from olmo_cli.model.olmo import build_model
from olmo_cli.world import World
from tests.eval.test_scoring import DOCS, EOS, MAX_LENGTH, PAD, encode
from tests.train import _dist_worker as worker


def job_score(world: World, out: Path) -> None:
    from olmo_cli.train.parallelize import full_model_state

    model, _ = worker.build(worker.tiny_config(), world)
    state = full_model_state(model)  # before scoring: a no-grad forward leaves the root unsharded
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    scores = score_requests(
        model,
        reqs.requests,
        batch_size=2,
        pad_token_id=PAD,
        full_logits=True,
        rank=world.rank,
        world_size=world.world_size,
    )
    if world.is_main:
        torch.save({"ll": scores.loglikelihood, "greedy": scores.greedy, "state": state}, out / "scores.pt")


@pytest.mark.slow
def test_two_fsdp_ranks_score_like_one_process(tmp_path):
    worker.spawn(job_score, 2, tmp_path)
    found = torch.load(tmp_path / "scores.pt", weights_only=False)
    model = build_model(worker.tiny_config().model, "cpu")
    model.load_state_dict(found["state"])
    reqs = build_requests(DOCS, encode, EOS, MAX_LENGTH)
    one = score_requests(model.eval(), reqs.requests, batch_size=2, pad_token_id=PAD)
    np.testing.assert_allclose(found["ll"], one.loglikelihood, rtol=1e-5, atol=1e-4)
    assert found["greedy"].tolist() == one.greedy.tolist()
