"""Inference matmuls on the CPU through oneDNN with each weight packed once.

`F.linear` on a CPU hands a decode step's few rows (one per sequence) to a general matrix routine that
runs them as matrix-vector products on one core, re-reading the weight in its stored layout: for the
small OLMo models that is most of a generated token's time. oneDNN's inner-product with the weight
reordered once into its own blocked layout (the packing torch's inductor does when it freezes a CPU
model) uses every thread and reads the weight as its kernels want it: 1.5-3x faster at 1-8 rows, and no
slower at prompt length (benchmarks/bench_generate.py measures the whole effect).

Only where nothing needs a gradient and the result is what `F.linear` computes up to summation order:
a plain CPU tensor in fp32 or bf16 (not one made under inference_mode, whose changes could not be
seen), the input in the weight's dtype, no autocast. Anything else, and
any build of torch without oneDNN, takes `F.linear` itself. The packed copy is cached per weight and
made again when the weight changes (its version counter or storage), so it never goes stale.

`OLMO_PACKED_LINEAR=0` turns it off (`enable(model, False)` does the same for one model).
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedLinear", "available", "enable", "linear"]

_ENV = "OLMO_PACKED_LINEAR"
_DTYPES = (torch.float32, torch.bfloat16)
_SMALL_FP32 = 1 << 18
# id(weight) -> (weak reference to it, (version, data_ptr), packed copy), or (reference, None, None) for a
# weight that never takes the packed path. Keyed by id, not by the tensor (a weak-keyed dict compares
# tensors with ==); the reference's callback drops the entry with the weight, so a dropped model frees
# its packed copies too.
_PACKED: dict[int, tuple[weakref.ref, tuple[int, int] | None, torch.Tensor | None]] = {}
_AVAILABLE: bool | None = None


def _self_check() -> bool:
    """The op exists in this torch build, runs, and agrees with F.linear on a small random product."""
    ops = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not hasattr(ops, "_linear_pointwise"):
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 40, generator=generator)
    bias = torch.randn(24, generator=generator)
    x = torch.randn(3, 40, generator=generator)
    try:
        with torch.inference_mode():
            got = ops._linear_pointwise(x, ops._reorder_linear_weight(weight), bias, "none", [], "")
    except (RuntimeError, TypeError):
        return False
    return got.shape == (3, 24) and torch.allclose(got, F.linear(x, weight, bias), rtol=1e-4, atol=1e-4)


def available() -> bool:
    """Whether packed matmuls are on: oneDNN works in this torch and OLMO_PACKED_LINEAR is not 0."""
    global _AVAILABLE
    if os.environ.get(_ENV, "").strip() in {"0", "false", "no", "off"}:
        return False
    if _AVAILABLE is None:
        _AVAILABLE = _self_check()
    return _AVAILABLE


def _weight_takes_it(weight: torch.Tensor) -> bool:
    """What never changes for one weight tensor: a plain 2-d CPU tensor in fp32/bf16 with a version
    counter (one made under inference_mode has none, so a change to it could not be noticed)."""
    # Plain tensors only: no DTensor (FSDP), no tensor subclass, nothing already in oneDNN's layout.
    if type(weight) not in (torch.Tensor, nn.Parameter) or weight.device.type != "cpu":
        return False
    plain = weight.dtype in _DTYPES and weight.dim() == 2
    return plain and not weight.is_mkldnn and not weight.is_inference()


def _packed(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight's packed copy (made now if it is missing or the weight changed), or None when this
    weight does not take the packed path; both answers cached per weight, so a decode step pays a dict
    lookup."""
    key = id(weight)
    cached = _PACKED.get(key)
    if cached is not None and cached[0]() is weight:
        if cached[2] is None:
            return None
        if cached[1] == (weight._version, weight.data_ptr()):
            return cached[2]
    ref = weakref.ref(weight, lambda _, key=key: _PACKED.pop(key, None))
    if not _weight_takes_it(weight):
        _PACKED[key] = (ref, None, None)
        return None
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
    _PACKED[key] = (ref, (weight._version, weight.data_ptr()), packed)
    return packed


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the packed weight where that applies (see the module)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return F.linear(x, weight, bias)
    if type(x) is not torch.Tensor or x.dtype != weight.dtype or not available():
        return F.linear(x, weight, bias)
    if bias is not None and (type(bias) not in (torch.Tensor, nn.Parameter) or bias.dtype != weight.dtype):
        return F.linear(x, weight, bias)
    if weight.dtype == torch.float32 and x.numel() == x.shape[-1] and weight.numel() <= _SMALL_FP32:
        # One fp32 row by a small weight: oneDNN's fixed cost per call is more than the product itself
        # (256x256: 20 us packed, 7 us plain; the two meet near 2^18 elements).
        return F.linear(x, weight, bias)
    if torch.is_autocast_enabled("cpu"):
        return F.linear(x, weight, bias)
    packed = _packed(weight)
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An nn.Linear whose inference forward is `linear` above; the same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def enable(model: nn.Module, on: bool = True) -> nn.Module:
    """Turns packed inference matmuls on (or back off) for every plain nn.Linear of `model` and for an
    OLMo's tied output projection. In place and idempotent; returns the model."""
    for module in model.modules():
        if on and type(module) is nn.Linear:
            module.__class__ = PackedLinear
        elif not on and type(module) is PackedLinear:
            module.__class__ = nn.Linear
    if hasattr(model, "packed_head"):
        # A quantized embedding dequantizes its table on every read: packing that would cost more than
        # it saves, so only a plain embedding's table is packed as the output projection.
        tied = bool(model.config.weight_tying)
        model.packed_head = on and tied and type(model.transformer["wte"]) is nn.Embedding
    return model
