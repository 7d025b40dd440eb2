"""The quantizers against independent constructions: weights built from known codes and scales must
come back exactly; arbitrary weights must stay within the format's rounding error."""

from __future__ import annotations

import pytest
import torch

from olmo_cli.quant.pack import (
    dequantize_int4,
    dequantize_int8,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    unpack_nibbles,
)

GEN = torch.Generator().manual_seed(0)


def test_int8_weights_built_from_codes_come_back_exactly():
    rows, cols = 8, 64
    codes = torch.randint(-127, 128, (rows, cols), generator=GEN)
    codes[:, 0] = 127  # each row reaches the top code, so absmax / 127 is the scale itself
    scales = (torch.rand(rows, generator=GEN) + 0.1).to(torch.bfloat16)
    weight = codes.float() * scales.float()[:, None]
    q = quantize_int8(weight)
    assert torch.equal(q.qweight, codes.to(torch.int8))
    assert torch.equal(q.scales, scales)
    assert torch.equal(dequantize_int8(q), weight)


def test_int8_error_is_at_most_half_a_step_per_row():
    weight = torch.randn(32, 96, generator=GEN) * torch.linspace(0.01, 3, 32)[:, None]
    q = quantize_int8(weight)
    step = q.scales.float()[:, None]
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() <= 127
    assert ((dequantize_int8(q) - weight).abs() <= step / 2 * (1 + 1e-3)).all()


def test_int4_weights_built_from_codes_come_back_exactly():
    rows, cols, group = 4, 256, 64
    codes = torch.randint(0, 16, (rows, cols // group, group), generator=GEN)
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans the full code range
    scales = (torch.rand(rows, cols // group, generator=GEN) + 0.05).to(torch.bfloat16)
    zeros = torch.randn(rows, cols // group, generator=GEN).to(torch.bfloat16)
    weight = ((codes.float() - 8) * scales.float()[..., None] + zeros.float()[..., None]).reshape(rows, cols)
    q = quantize_int4(weight, group)
    assert torch.equal(unpack_nibbles(q.qweight), codes.reshape(rows, cols).to(torch.uint8))
    assert torch.equal(dequantize_int4(q), weight)


def _minmax_mse(weight: torch.Tensor, group: int) -> float:
    """The textbook asymmetric 4-bit quantizer (fp32 scale, no clipping search), as the baseline."""
    w = weight.reshape(weight.shape[0], -1, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = (hi - lo) / 15
    deq = torch.round((w - lo) / scale).clamp(0, 15) * scale + lo
    return float(((deq - w) ** 2).mean())


@pytest.mark.parametrize("group", [32, 128])
def test_int4_error_is_no_worse_than_plain_min_max(group):
    weight = torch.randn(64, 256, generator=GEN)
    weight[0, 3] = 9.0  # an outlier: clipping it pays off for its group
    q = quantize_int4(weight, group)
    ours = float(((dequantize_int4(q) - weight) ** 2).mean())
    assert ours <= _minmax_mse(weight, group)
    assert q.qweight.shape == (64, 128) and q.qweight.dtype == torch.uint8
    assert q.scales.shape == q.zeros.shape == (64, 256 // group)


def test_quantizing_is_deterministic():
    weight = torch.randn(48, 256, generator=GEN)
    a, b = quantize_int4(weight, 128), quantize_int4(weight.clone(), 128)
    assert (
        torch.equal(a.qweight, b.qweight)
        and torch.equal(a.scales, b.scales)
        and torch.equal(a.zeros, b.zeros)
    )
    c, d = quantize_int8(weight), quantize_int8(weight.clone())
    assert torch.equal(c.qweight, d.qweight) and torch.equal(c.scales, d.scales)


def test_nibbles_pack_even_columns_low():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F]]
    assert torch.equal(unpack_nibbles(packed), codes)


def test_int4_rejects_rows_the_group_does_not_divide():
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_int4(torch.randn(4, 96), 64)
