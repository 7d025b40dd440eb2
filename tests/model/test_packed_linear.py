"""Packed inference matmuls (model/packed_linear.py): the same numbers as F.linear (to summation order),
only where no gradient is wanted, never stale after the weight changes, off by OLMO_PACKED_LINEAR=0, and
the same generated tokens as the plain model."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.model import packed_linear
from olmo_cli.model.generate import GenerationSettings, generate_ids
from olmo_cli.model.olmo import build_model
from tests.model.test_olmo_reference import tiny_config

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this torch build has no oneDNN")


def _linear(out_features=48, in_features=40, bias=True, dtype=torch.float32, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 40), (8, 40), (2, 5, 40), (300, 40)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_packed_equals_f_linear(dtype, shape, bias):
    layer = _linear(bias=bias, dtype=dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.inference_mode():
        expected = F.linear(x, layer.weight, layer.bias)
        packed_linear.enable(layer)
        got = layer(x)
    assert type(layer) is packed_linear.PackedLinear
    assert got.shape == expected.shape and got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_a_gradient_takes_f_linear():
    layer = packed_linear.enable(_linear())
    x = torch.randn(4, 40, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))  # bit-identical: the plain path
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_autocast_and_other_dtypes_take_f_linear():
    layer = packed_linear.enable(_linear())
    x = torch.randn(4, 40)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16  # autocast's own cast: what F.linear does under it
    half = packed_linear.enable(_linear(dtype=torch.float16))
    with torch.inference_mode():
        x16 = x.half()
        assert torch.equal(half(x16), F.linear(x16, half.weight, half.bias))


def test_the_packed_copy_follows_the_weight():
    layer = packed_linear.enable(_linear())
    x = torch.randn(3, 40)
    with torch.inference_mode():
        before = layer(x)
        with torch.no_grad():
            layer.weight.mul_(2)  # in place: the version counter moves
        doubled = layer(x)
    layer.weight = nn.Parameter(torch.zeros_like(layer.weight))  # replaced: a new tensor
    with torch.inference_mode():
        replaced = layer(x)
    torch.testing.assert_close(doubled - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replaced, layer.bias.expand(3, -1).detach(), rtol=0, atol=0)


def test_weights_made_under_inference_mode_take_f_linear():
    with torch.inference_mode():
        layer = packed_linear.enable(_linear())
        x = torch.randn(3, 40)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_packed_copies_go_with_their_weights():
    gc.collect()
    baseline = len(packed_linear._PACKED)
    layers = [packed_linear.enable(_linear(seed=i)) for i in range(3)]
    with torch.inference_mode():
        for layer in layers:
            layer(torch.randn(2, 40))
    assert len(packed_linear._PACKED) == baseline + 3
    del layers, layer
    gc.collect()
    assert len(packed_linear._PACKED) == baseline


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("OLMO_PACKED_LINEAR", "0")
    assert not packed_linear.available()
    layer = packed_linear.enable(_linear())
    x = torch.randn(5, 40)
    with torch.inference_mode():
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_generation_gives_the_same_tokens_and_the_state_dict_is_unchanged(tied, monkeypatch):
    cfg = tiny_config(weight_tying=tied, init_std=0.3, init_fn="normal")
    model = build_model(cfg, seed=5).eval()
    keys = list(model.state_dict())
    prompts = [[3, 9, 27, 81 % cfg.vocab_size], [5, 7]]
    settings = GenerationSettings(max_new_tokens=12)
    with torch.inference_mode():
        plain_logits = model(torch.tensor([prompts[0]]))
    monkeypatch.setenv("OLMO_PACKED_LINEAR", "0")
    plain = generate_ids(model, prompts, settings)
    monkeypatch.delenv("OLMO_PACKED_LINEAR")
    packed = generate_ids(model, prompts, settings)  # generate_ids turns packing on for the model
    assert packed == plain
    assert model.packed_head is tied
    assert not any(type(m) is nn.Linear for m in model.modules()), "every plain Linear is packed"
    with torch.inference_mode():
        packed_logits = model(torch.tensor([prompts[0]]))
    torch.testing.assert_close(packed_logits, plain_logits, rtol=1e-4, atol=1e-4)
    assert list(model.state_dict()) == keys
    packed_linear.enable(model, False)
    assert not model.packed_head and not any(type(m) is packed_linear.PackedLinear for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(torch.tensor([prompts[0]])), plain_logits)
