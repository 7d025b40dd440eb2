"""QuantLinear / QuantEmbedding against the plain reference: the matmul with the dequantized weight.

The kernels take bf16 activations, so the reference is computed in fp32 from the bf16-rounded input and
the tolerance is bf16's (relative 2^-8 on the output, a little more for the dequantized bf16 path)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from olmo_cli.quant.modules import KERNEL_MAX_ROWS, QuantEmbedding, QuantLinear, cpu_kernels_available
from olmo_cli.quant.pack import Int8Weight, dequantize_int4, dequantize_int8, quantize_int4, quantize_int8

GEN = torch.Generator().manual_seed(0)
OUT, IN = 96, 256


def _packed(method: str, weight: torch.Tensor):
    return quantize_int8(weight) if method == "int8" else quantize_int4(weight, 128)


def _reference(x: torch.Tensor, packed, bias: torch.Tensor | None) -> torch.Tensor:
    deq = dequantize_int8(packed) if isinstance(packed, Int8Weight) else dequantize_int4(packed)
    out = x.to(torch.bfloat16).float() @ deq.T
    return out + bias if bias is not None else out


def test_this_torch_has_the_cpu_kernels():
    # The speed claims rest on these; torch >= 2.6 (our lower bound) has both.
    assert cpu_kernels_available() == {"int8": True, "int4": True}


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("rows", [1, 5, KERNEL_MAX_ROWS + 7])  # kernel path, kernel path, dequantized path
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quant_linear_matches_the_dequantized_matmul(method, rows, dtype):
    weight = torch.randn(OUT, IN, generator=GEN) / IN**0.5
    bias = torch.randn(OUT, generator=GEN)
    packed = _packed(method, weight)
    layer = QuantLinear(packed, bias, dtype=dtype)
    x = torch.randn(1, rows, IN, generator=GEN).to(dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (1, rows, OUT)
    ref = _reference(x[0], packed, bias)
    scale = ref.abs().max().item()
    torch.testing.assert_close(out[0].float(), ref, rtol=0, atol=scale * 2**-6)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_few_rows_run_the_kernel_without_dequantizing(method, monkeypatch):
    layer = QuantLinear(_packed(method, torch.randn(OUT, IN, generator=GEN)), dtype=torch.float32)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the weight was dequantized")

    monkeypatch.setattr(QuantLinear, "dequantized", refuse)
    assert layer(torch.randn(2, IN)).shape == (2, OUT)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quant_embedding_dequantizes_exactly_the_rows_looked_up(method):
    weight = torch.randn(64, IN, generator=GEN)
    packed = _packed(method, weight)
    table = dequantize_int8(packed) if method == "int8" else dequantize_int4(packed)
    embedding = QuantEmbedding(packed, dtype=torch.float32)
    ids = torch.tensor([[3, 0, 63], [5, 5, 1]])
    assert torch.equal(embedding(ids), F.embedding(ids, table))
    assert torch.equal(embedding.weight, table)  # the property: the whole table, for any reader


def test_weight_property_follows_the_module_dtype():
    layer = QuantLinear(quantize_int8(torch.randn(OUT, IN, generator=GEN)), dtype=torch.float32)
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16
    assert layer(torch.randn(1, IN, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_operands_starting_inside_a_buffer_are_safe():
    # safetensors' load_file hands out tensors inside the mmapped file, at any byte offset; torch's int8
    # kernel reads with aligned loads and crashed the process on them.
    packed = quantize_int8(torch.randn(OUT, IN, generator=GEN))
    storage = torch.empty(OUT * IN + 8, dtype=torch.int8)
    inside = storage[8:].view(OUT, IN)
    inside.copy_(packed.qweight)
    layer = QuantLinear(Int8Weight(inside, packed.scales), dtype=torch.bfloat16)
    x = torch.randn(4 * IN + 4, generator=GEN).to(torch.bfloat16)[4:].view(4, IN)
    ref = _reference(x, packed, None)
    torch.testing.assert_close(layer(x).float(), ref, rtol=0, atol=ref.abs().max().item() * 2**-6)
