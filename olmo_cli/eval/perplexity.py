"""In-loop perplexity on held-out token files, as upstream's "lm" evaluators compute it (docs/format.md
§9.1).

Each rank reads its share of the instances through a distributed sampler (shuffled with the seed,
`drop_last` as configured), so with FSDP every rank runs the same number of forward passes. Per
instance: cross-entropy summed over the L-1 predicted positions (ignored positions count 0) and divided
by L-1; the metric is the unweighted mean of those instance means over all ranks, per `data.datasets`
label when the data has labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.data.dataset import Instance, MemmapDataset
from olmo_cli.errors import DataError
from olmo_cli.model.loss import IGNORE_INDEX, labels_for

__all__ = ["World", "evaluate_perplexity", "eval_indices"]

OVERALL = ""  # the key of the metric over all instances


class World(Protocol):
    rank: int
    world_size: int
    device: torch.device


def eval_indices(num_instances: int, *, rank: int, world_size: int, seed: int, drop_last: bool) -> list[int]:
    """This rank's instances: torch's DistributedSampler with shuffling, at epoch 0 (what upstream uses)."""
    from torch.utils.data import DistributedSampler

    class _Sized:
        def __len__(self) -> int:
            return num_instances

    sampler = DistributedSampler(
        _Sized(),  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=drop_last,
    )
    return list(sampler)


def evaluate_perplexity(
    model: nn.Module,
    dataset: MemmapDataset,
    *,
    batch_size: int,
    world: World | None,
    autocast_dtype: torch.dtype | None,
    seed: int,
    max_batches: int | None = None,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
    drop_last: bool = True,
) -> dict[str, float]:
    """{"CrossEntropyLoss", "Perplexity"} over the dataset, plus "<label>/CrossEntropyLoss" and
    "<label>/Perplexity" per label when the dataset has `data.datasets` labels.

    `world` None means one process on the model's device. `all_reduce` sums a tensor in place across
    ranks (default: torch.distributed's, when there is more than one rank). `max_batches` limits the
    batches per rank (upstream's `eval_subset_num_batches`; None or negative: all).
    The model is evaluated in eval mode without gradients and put back in the mode it was in.
    """
    rank, world_size = (world.rank, world.world_size) if world is not None else (0, 1)
    device = world.device if world is not None else _model_device(model)
    indices = eval_indices(len(dataset), rank=rank, world_size=world_size, seed=seed, drop_last=drop_last)
    if not indices:
        raise DataError(
            f"the evaluation data has {len(dataset)} instances of {dataset.seq_len} tokens, "
            f"too few for {world_size} rank(s)",
            hint="give more validation data, or a shorter max_sequence_length",
        )
    batch_size = min(batch_size, len(indices))  # upstream shrinks the batch to the rank's share
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if max_batches is not None and max_batches >= 0:
        batches = batches[:max_batches]
    keys = [OVERALL] + sorted({label for label in dataset.labels if label is not None})
    # Per key: (sum of instance CE means, instance count), in float64 so the sum over ranks is exact enough.
    totals = torch.zeros(len(keys), 2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                instances = [dataset[i] for i in batch]
                per_instance = _instance_losses(model, instances, device, autocast_dtype).double()
                _accumulate(totals, keys, instances, per_instance)
    finally:
        model.train(was_training)
    _reduce(totals, world_size, all_reduce)
    return _metrics(keys, totals.cpu())


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _instance_losses(
    model: nn.Module, instances: Sequence[Instance], device: torch.device, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """Mean CE over the L-1 predicted positions of each instance: [b] fp32."""
    input_ids = torch.from_numpy(np.stack([inst.input_ids for inst in instances])).to(device)
    label_mask = None
    if instances[0].label_mask is not None:
        masks = np.stack([inst.label_mask for inst in instances])  # type: ignore[misc]
        label_mask = torch.from_numpy(masks).to(device)
    autocast: Any = (
        torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    with autocast:
        logits = model(input_ids)
    labels = labels_for(input_ids, label_mask)
    # The logits of the last position predict nothing: an ignored label there instead of slicing them.
    labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)
    b, t, vocab = logits.shape
    ce = F.cross_entropy(
        logits.reshape(-1, vocab).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return ce.view(b, t).sum(dim=1) / (t - 1)


def _accumulate(
    totals: torch.Tensor, keys: list[str], instances: Sequence[Instance], losses: torch.Tensor
) -> None:
    totals[0, 0] += losses.sum()
    totals[0, 1] += len(instances)
    for i, inst in enumerate(instances):
        if inst.label is not None:
            row = keys.index(inst.label)
            totals[row, 0] += losses[i]
            totals[row, 1] += 1


def _reduce(totals: torch.Tensor, world_size: int, all_reduce: Callable[[torch.Tensor], None] | None) -> None:
    if all_reduce is not None:
        all_reduce(totals)
    elif world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(totals, op=dist.ReduceOp.SUM)


def _metrics(keys: list[str], totals: torch.Tensor) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, (loss_sum, count) in zip(keys, totals.tolist(), strict=True):
        if count == 0:
            continue
        ce = loss_sum / count
        prefix = f"{key}/" if key else ""
        out[f"{prefix}CrossEntropyLoss"] = ce
        out[f"{prefix}Perplexity"] = math.exp(ce) if ce < 700 else math.inf
    return out
