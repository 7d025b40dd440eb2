"""The blockwise fp32 cross-entropy against torch's F.cross_entropy and logsumexp on fp32 copies, across
several blocks (a ragged last one), ignored rows, z-loss gradients and bf16 logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from olmo_cli.model import fused_loss
from olmo_cli.model.fused_loss import fused_cross_entropy

IGNORE = -100


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(fused_loss, "_BLOCK_ELEMENTS", 3 * 50)  # 3 rows of 50 per block: 7 blocks for 20 rows


def _data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(20, 50, generator=gen) * 4).to(dtype)
    labels = torch.randint(0, 50, (20,), generator=gen)
    labels[[1, 7, 19]] = IGNORE
    return logits, labels


def _reference(logits, labels, z_weight, ce_weight=1.0):
    x = logits.detach().float().requires_grad_()
    ce = F.cross_entropy(x, labels, ignore_index=IGNORE, reduction="sum")
    z = (torch.logsumexp(x, dim=-1).pow(2) * (labels != IGNORE)).sum()
    (ce_weight * ce + z_weight * z).backward()
    return ce.detach(), z.detach(), x.grad


def test_values_and_gradients_match_torch_in_fp32():
    logits, labels = _data()
    x = logits.clone().requires_grad_()
    ce, z = fused_cross_entropy(x, labels, IGNORE)
    (0.5 * ce + 0.01 * z).backward()
    ref_ce, ref_z, ref_grad = _reference(logits, labels, 0.01, ce_weight=0.5)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(z, ref_z, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert x.grad[[1, 7, 19]].abs().sum() == 0  # ignored rows get no gradient
    assert torch.equal(x.detach(), logits)  # the logits are read, never overwritten


def test_bf16_logits_get_fp32_math_and_a_bf16_gradient():
    logits, labels = _data(torch.bfloat16)
    x = logits.clone().requires_grad_()
    ce, _ = fused_cross_entropy(x, labels, IGNORE)
    ce.backward()
    ref_ce, _, ref_grad = _reference(logits, labels, 0.0)  # on the exact fp32 values of the bf16 logits
    assert ce.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=0)
    torch.testing.assert_close(x.grad, ref_grad.to(torch.bfloat16), rtol=1e-2, atol=1e-6)


def test_all_rows_ignored_gives_zero_and_no_nan():
    logits, labels = _data()
    x = logits.clone().requires_grad_()
    ce, z = fused_cross_entropy(x, torch.full_like(labels, IGNORE), IGNORE)
    (ce + z).backward()
    assert ce.item() == 0 and z.item() == 0
    assert torch.equal(x.grad, torch.zeros_like(x))
