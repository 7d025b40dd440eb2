"""The training loss: next-token cross-entropy with upstream's masking and normalization (docs/format.md
§7), plus the optional z-loss.

Upstream (v0.4+) sums token losses and divides by the *device batch's* `input_ids.numel()` (Bd·L, which
counts the unpredicted first position and ignored positions too). Micro-batches are divided by the same
number and their losses summed, so the gradient does not depend on how a batch is split.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from olmo_cli.errors import OlmoError
from olmo_cli.model.fused_loss import fused_cross_entropy

__all__ = [
    "IGNORE_INDEX",
    "Z_LOSS_MULTIPLIER",
    "LossParts",
    "NonFiniteLossError",
    "check_finite",
    "labels_for",
]

IGNORE_INDEX = -100
# Upstream hardcodes 1e-4; its `auxiliary_loss_multiplier` config field is never read.
Z_LOSS_MULTIPLIER = 1e-4


class NonFiniteLossError(OlmoError):
    """The loss became NaN or infinite: training has diverged (or the batch is broken)."""


class LossParts(NamedTuple):
    loss: torch.Tensor  # what backward runs on: (CE sum + z-loss sum) / normalize_by
    ce_loss: torch.Tensor  # CE sum / normalize_by: this micro-batch's share of train/CrossEntropyLoss
    ce_sum: torch.Tensor  # summed token CE (fp32), before normalization
    z_loss: torch.Tensor | None  # z-loss sum / normalize_by (train/ZLoss share), when enabled


def labels_for(
    input_ids: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    instance_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token labels [B, T-1]: the inputs shifted left, IGNORE_INDEX where no loss is taken.

    Masks are applied before the shift, as upstream does, so `label_mask[b, t]` governs predicting token
    t (from position t-1).
    """
    labels = input_ids.clone()
    if label_mask is not None:
        labels.masked_fill_(~label_mask.bool(), IGNORE_INDEX)
    if attention_mask is not None:
        labels.masked_fill_(attention_mask == 0, IGNORE_INDEX)
    if instance_mask is not None:
        labels.masked_fill_(~instance_mask.bool().unsqueeze(-1), IGNORE_INDEX)
    return labels[:, 1:]


def cross_entropy_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    label_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    instance_mask: torch.Tensor | None = None,
    *,
    z_loss: bool = False,
    normalize_by: int | None = None,
    z_loss_multiplier: float = Z_LOSS_MULTIPLIER,
    raise_on_non_finite: bool = True,
) -> LossParts:
    """Loss of logits [B, T, V] for input_ids [B, T], CE in fp32 over all V classes.

    `normalize_by` defaults to `input_ids.numel()`; a trainer splitting a device batch into micro-batches
    passes the device batch's numel for each. `raise_on_non_finite=False` skips the host sync the check
    costs, for a caller that checks the accumulated step loss with `check_finite` instead.
    """
    normalizer = input_ids.numel() if normalize_by is None else normalize_by
    if normalizer <= 0:
        raise ValueError(f"normalize_by must be positive, got {normalizer}")
    labels = labels_for(input_ids, label_mask, attention_mask, instance_mask)
    # Pad the labels to T with an ignored last position instead of slicing the logits to T-1: the same
    # sum, without copying the [B, T-1, V] logits (the largest activation of the whole step).
    labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)
    vocab = logits.shape[-1]
    # fp32 CE (and z-loss log-sum-exp) without an fp32 copy of the logits: see model/fused_loss.py.
    ce_sum, lse_sq_sum = fused_cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), IGNORE_INDEX)
    ce_loss = ce_sum / normalizer
    z_term = None
    if z_loss:
        z_term = z_loss_multiplier * lse_sq_sum / normalizer
    if raise_on_non_finite:
        check_finite(ce_loss, z_term)
    loss = ce_loss if z_term is None else ce_loss + z_term
    return LossParts(loss=loss, ce_loss=ce_loss, ce_sum=ce_sum, z_loss=z_term)


def check_finite(ce_loss: torch.Tensor, z_loss: torch.Tensor | None = None) -> None:
    """Raises NonFiniteLossError when the CE or z-loss is NaN or infinite (waits for the device)."""
    bad = [
        name
        for name, value in (("cross-entropy loss", ce_loss), ("z-loss", z_loss))
        if value is not None and not bool(torch.isfinite(value.detach()).all())
    ]
    if bad:
        raise NonFiniteLossError(
            f"training diverged: the {' and '.join(bad)} is not finite (NaN or inf)",
            hint="resume from an earlier checkpoint with a lower learning rate or stronger clipping, or turn "
            "on softmax_auxiliary_loss (z-loss); also check the batch's data",
        )
