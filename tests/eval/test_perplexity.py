"""In-loop perplexity against an independent computation: torch's cross_entropy over each instance's
predicted positions, averaged by hand over the instances each rank would read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.errors import DataError
from olmo_cli.eval.perplexity import evaluate_perplexity
from olmo_cli.model.olmo import build_model
from tests._fixtures import model_config

SEQ, VOCAB = 16, 64


@dataclass
class FakeWorld:
    rank: int
    world_size: int
    device: torch.device = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    model = build_model(model_config(VOCAB, max_sequence_length=SEQ, init_std=0.2), "cpu", seed=0)
    model.train()
    return model


def _dataset(
    tmp_path, n_instances: int, *, files: int = 1, labels=None, masks: bool = False
) -> MemmapDataset:
    rng = np.random.default_rng(1)
    paths, mask_paths = [], []
    for f in range(files):
        path = tmp_path / f"part-{f}.npy"
        rng.integers(0, VOCAB, size=n_instances * SEQ + 3).astype(np.uint16).tofile(path)  # +3: a tail
        paths.append(str(path))
        if masks:
            mask_path = tmp_path / f"part-{f}.mask.npy"
            (rng.random(n_instances * SEQ + 3) < 0.6).tofile(mask_path)
            mask_paths.append(str(mask_path))
    return MemmapDataset(paths, SEQ, "uint16", mask_paths or None, labels)


def _reference(model, dataset, indices) -> float:
    """Mean over `indices` of each instance's CE: summed over predicted (unmasked) positions / (L-1)."""
    values = []
    with torch.no_grad():
        for i in indices:
            inst = dataset[i]
            ids = torch.from_numpy(inst.input_ids)[None]
            logits = model(ids)[0, :-1]
            targets = ids[0, 1:]
            ce = F.cross_entropy(logits.double(), targets, reduction="none")
            if inst.label_mask is not None:
                ce = ce * torch.from_numpy(inst.label_mask[1:]).double()
            values.append(ce.sum().item() / (SEQ - 1))
    return sum(values) / len(values)


def test_one_process_matches_the_reference_and_restores_train_mode(model, tmp_path):
    data = _dataset(tmp_path, 10)
    out = evaluate_perplexity(model, data, batch_size=4, world=None, autocast_dtype=None, seed=3)
    expected = _reference(model, data, range(10))  # one rank reads every instance
    assert out["CrossEntropyLoss"] == pytest.approx(expected, rel=1e-5)
    assert out["Perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_label_masks_count_zero_but_still_divide_by_l_minus_1(model, tmp_path):
    data = _dataset(tmp_path, 6, masks=True)
    out = evaluate_perplexity(model, data, batch_size=6, world=None, autocast_dtype=None, seed=0)
    assert out["CrossEntropyLoss"] == pytest.approx(_reference(model, data, range(6)), rel=1e-5)


def test_max_batches_reads_the_seeded_shuffle(model, tmp_path):
    data = _dataset(tmp_path, 12)
    out = evaluate_perplexity(
        model, data, batch_size=3, world=None, autocast_dtype=None, seed=7, max_batches=2
    )
    # torch's DistributedSampler shuffles with randperm seeded by seed + epoch (epoch 0).
    order = torch.randperm(12, generator=torch.Generator().manual_seed(7)).tolist()
    assert out["CrossEntropyLoss"] == pytest.approx(_reference(model, data, order[:6]), rel=1e-5)


def test_two_ranks_aggregate_to_the_mean_over_both_shares(model, tmp_path):
    data = _dataset(tmp_path, 11)  # odd: drop_last leaves one instance out
    shared: list[torch.Tensor] = []

    def rank1_reduce(t: torch.Tensor) -> None:
        shared.append(t.clone())  # what rank 1 contributes to the sum

    def rank0_reduce(t: torch.Tensor) -> None:
        t += shared[0]

    evaluate_perplexity(
        model, data, batch_size=2, world=FakeWorld(1, 2), autocast_dtype=None, seed=5, all_reduce=rank1_reduce
    )
    out = evaluate_perplexity(
        model, data, batch_size=2, world=FakeWorld(0, 2), autocast_dtype=None, seed=5, all_reduce=rank0_reduce
    )
    order = torch.randperm(11, generator=torch.Generator().manual_seed(5)).tolist()
    kept = order[:10]  # drop_last: 2 * floor(11 / 2)
    assert shared[0][0, 1].item() == 5  # rank 1 read five instances
    assert out["CrossEntropyLoss"] == pytest.approx(_reference(model, data, kept), rel=1e-5)


def test_labels_get_their_own_metrics(model, tmp_path):
    data = _dataset(tmp_path, 4, files=2, labels=["b-set", "a-set"])
    out = evaluate_perplexity(model, data, batch_size=3, world=None, autocast_dtype=None, seed=0)
    assert out["a-set/CrossEntropyLoss"] == pytest.approx(_reference(model, data, range(4, 8)), rel=1e-5)
    assert out["b-set/CrossEntropyLoss"] == pytest.approx(_reference(model, data, range(0, 4)), rel=1e-5)
    assert out["CrossEntropyLoss"] == pytest.approx(_reference(model, data, range(8)), rel=1e-5)


def test_bf16_autocast_is_close_to_fp32(model, tmp_path):
    data = _dataset(tmp_path, 4)
    fp32 = evaluate_perplexity(model, data, batch_size=4, world=None, autocast_dtype=None, seed=0)
    bf16 = evaluate_perplexity(model, data, batch_size=4, world=None, autocast_dtype=torch.bfloat16, seed=0)
    assert bf16["CrossEntropyLoss"] == pytest.approx(fp32["CrossEntropyLoss"], rel=2e-2)


def test_too_little_data_for_the_ranks_is_a_data_error(model, tmp_path):
    data = _dataset(tmp_path, 1)
    with pytest.raises(DataError, match="too few"):
        evaluate_perplexity(model, data, batch_size=1, world=FakeWorld(0, 2), autocast_dtype=None, seed=0)
