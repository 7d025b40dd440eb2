"""The training loss against a hand computation from log_softmax (docs/format.md §7)."""

from __future__ import annotations

import pytest
import torch

from olmo_cli.errors import OlmoError
from olmo_cli.model.loss import (
    IGNORE_INDEX,
    NonFiniteLossError,
    check_finite,
    cross_entropy_loss,
    labels_for,
)

B, T, V = 3, 5, 7


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=gen) * 3
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    return logits, input_ids


def reference(logits, input_ids, predicted):
    """Sum over predicted positions (b, t) of -log p(input_ids[b, t+1] | logits[b, t]), and of lse²."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    lse = torch.logsumexp(logits.double(), dim=-1)
    ce = z = 0.0
    for b in range(B):
        for t in range(T - 1):
            if predicted[b][t]:
                ce -= logp[b, t, input_ids[b, t + 1]].item()
                z += lse[b, t].item() ** 2
    return ce, z


def test_unmasked_loss_is_sum_over_shifted_tokens_divided_by_all_positions(batch):
    logits, input_ids = batch
    parts = cross_entropy_loss(logits, input_ids)
    ce, _ = reference(logits, input_ids, [[True] * (T - 1)] * B)
    assert parts.ce_sum.dtype == torch.float32
    assert parts.ce_sum.item() == pytest.approx(ce, rel=1e-6)
    # Normalized by B·T (15), not by the 12 predicted positions.
    assert parts.loss.item() == pytest.approx(ce / (B * T), rel=1e-6)
    assert parts.ce_loss.item() == parts.loss.item() and parts.z_loss is None


def test_masks_exclude_positions(batch):
    logits, input_ids = batch
    label_mask = torch.ones(B, T, dtype=torch.bool)
    label_mask[0, 2] = False  # token 2 of row 0 is not a target: prediction from position 1 is dropped
    attention_mask = torch.ones(B, T)
    attention_mask[1, 3:] = 0  # right padding in row 1: tokens 3, 4 are not targets
    instance_mask = torch.tensor([True, True, False])  # row 2 takes no loss at all
    parts = cross_entropy_loss(logits, input_ids, label_mask, attention_mask, instance_mask)
    predicted = [[True, False, True, True], [True, True, False, False], [False] * 4]
    ce, _ = reference(logits, input_ids, predicted)
    assert parts.ce_sum.item() == pytest.approx(ce, rel=1e-6)
    assert parts.loss.item() == pytest.approx(ce / (B * T), rel=1e-6)
    labels = labels_for(input_ids, label_mask, attention_mask, instance_mask)
    assert (labels == IGNORE_INDEX).tolist() == [[not p for p in row] for row in predicted]


def test_z_loss_over_predicted_positions(batch):
    logits, input_ids = batch
    instance_mask = torch.tensor([True, False, True])
    parts = cross_entropy_loss(logits, input_ids, instance_mask=instance_mask, z_loss=True)
    ce, z = reference(logits, input_ids, [[True] * 4, [False] * 4, [True] * 4])
    assert parts.z_loss.item() == pytest.approx(1e-4 * z / (B * T), rel=1e-6)
    assert parts.loss.item() == pytest.approx((ce + 1e-4 * z) / (B * T), rel=1e-6)
    assert parts.ce_loss.item() == pytest.approx(ce / (B * T), rel=1e-6)


def test_micro_batches_normalized_by_the_device_batch_add_up(batch):
    logits, input_ids = batch
    whole = cross_entropy_loss(logits, input_ids, z_loss=True)
    halves = [
        cross_entropy_loss(logits[rows], input_ids[rows], z_loss=True, normalize_by=input_ids.numel())
        for rows in (slice(0, 1), slice(1, 3))
    ]
    assert sum(h.loss.item() for h in halves) == pytest.approx(whole.loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        cross_entropy_loss(logits, input_ids, normalize_by=0)


def test_gradient_matches_log_softmax_reference(batch):
    logits, input_ids = batch
    ours = logits.clone().requires_grad_(True)
    cross_entropy_loss(ours, input_ids, z_loss=True).loss.backward()
    ref = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(ref, dim=-1)[:, :-1]
    targets = input_ids[:, 1:]
    ce = -logp.gather(-1, targets.unsqueeze(-1)).sum()
    z = 1e-4 * torch.logsumexp(ref[:, :-1], dim=-1).pow(2).sum()
    ((ce + z) / (B * T)).backward()
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-7)
    assert ours.grad[:, -1].abs().sum() == 0  # the last position predicts nothing


def test_low_precision_logits_get_fp32_cross_entropy(batch):
    logits, input_ids = batch
    bf16 = logits.bfloat16()
    parts = cross_entropy_loss(bf16, input_ids)
    assert parts.loss.dtype == torch.float32
    expected = cross_entropy_loss(bf16.float(), input_ids)
    assert parts.ce_sum.item() == expected.ce_sum.item()


def test_fully_masked_batch_has_zero_loss_not_nan(batch):
    logits, input_ids = batch
    parts = cross_entropy_loss(logits, input_ids, instance_mask=torch.zeros(B, dtype=torch.bool), z_loss=True)
    assert parts.loss.item() == 0.0


def test_nan_loss_raises_a_clear_error(batch):
    logits, input_ids = batch
    logits[1, 2, 0] = float("nan")
    with pytest.raises(
        NonFiniteLossError, match="training diverged: the cross-entropy loss is not finite"
    ) as e:
        cross_entropy_loss(logits, input_ids)
    assert isinstance(e.value, OlmoError) and "learning rate" in e.value.hint
    # A caller that defers the check gets the NaN back and checks the step's total once.
    parts = cross_entropy_loss(logits, input_ids, z_loss=True, raise_on_non_finite=False)
    assert torch.isnan(parts.loss)
    with pytest.raises(NonFiniteLossError, match="cross-entropy loss and z-loss"):
        check_finite(parts.ce_loss, parts.z_loss)
    check_finite(torch.tensor(1.0), torch.tensor(0.0))  # finite: no error
