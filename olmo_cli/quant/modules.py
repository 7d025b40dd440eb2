"""`QuantLinear` and `QuantEmbedding`: modules that hold quantized weights and compute with them.

On the CPU a QuantLinear calls torch's weight-only kernels: `_weight_int8pack_mm` (int8 weights, one
scale per output channel) and `_weight_int4pack_mm_for_cpu` (int4 weights, group-wise scales and
zeros). Their activations are bfloat16 (their fp32 variant is several times slower than a dense fp32
matmul), so inputs are cast to bf16 and results cast back to the input dtype. The kernels shine at few
rows, where reading the weights is the cost; for many rows (a prompt prefill, perplexity scoring) the
layer dequantizes its weight to bf16 for that one call and runs a dense bf16 matmul, which is faster
there. On other devices, or where this torch lacks a kernel, the dequantized path is used always.

The stored form (what `quantized.safetensors` holds) is the module's buffers; the int4 CPU kernel's own
tile layout is derived from it on first use and cached per device (not saved).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.quant.pack import (
    SCALE_DTYPE,
    Int4Weight,
    Int8Weight,
    dequantize_int4,
    dequantize_int8,
    unpack_nibbles,
)

__all__ = ["KERNEL_MAX_ROWS", "QuantEmbedding", "QuantLinear", "cpu_kernels_available"]

Method = Literal["int8", "int4"]
# Up to this many rows per call the weight-only kernels beat dequantize + dense bf16 matmul (measured
# on a 6144x2048 layer: ~0.15 ms per row for the kernels against a ~4 ms one-off dequantization).
KERNEL_MAX_ROWS = 32
_INT4_INNER_K_TILES = 2  # K must then be a multiple of 2 * 16 = 32; every int4 group size we allow is
# torch's int8 CPU kernel reads its weight and input with aligned vector loads: a tensor that starts
# inside a buffer (mmapped from a safetensors file, a slice) crashes it, so such operands are copied.
_ALIGNMENT = 64


def _aligned(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if t.data_ptr() % _ALIGNMENT == 0 else t.clone()


@cache
def cpu_kernels_available() -> dict[str, bool]:
    """Which weight-only CPU kernels this torch build has (torch >= 2.6 has both)."""
    ops = torch.ops.aten
    return {
        "int8": hasattr(ops, "_weight_int8pack_mm"),
        "int4": hasattr(ops, "_weight_int4pack_mm_for_cpu")
        and hasattr(ops, "_convert_weight_to_int4pack_for_cpu"),
    }


class _Quantized(nn.Module):
    """The buffers and dequantization both modules share.

    `anchor` is an empty parameter whose dtype and device follow `.to()`: the dtype outputs are produced
    in (the model's). Being a parameter, it also answers code that asks `next(model.parameters())` for
    the model's device or dtype, which a model of nothing but quantized buffers could not.
    """

    def __init__(self, packed: Int8Weight | Int4Weight, dtype: torch.dtype) -> None:
        super().__init__()
        self.method: Method = "int8" if isinstance(packed, Int8Weight) else "int4"
        self.group_size = packed.group_size if isinstance(packed, Int4Weight) else None
        self.register_buffer("qweight", _aligned(packed.qweight))
        self.register_buffer("scales", _aligned(packed.scales))
        if isinstance(packed, Int4Weight):
            self.register_buffer("zeros", _aligned(packed.zeros))
        self.anchor = nn.Parameter(
            torch.empty(0, dtype=dtype, device=packed.qweight.device), requires_grad=False
        )

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        k = self.qweight.shape[1]
        return k * 2 if self.method == "int4" else k

    def packed(self) -> Int8Weight | Int4Weight:
        scales = self.scales.to(SCALE_DTYPE)
        if self.method == "int8":
            return Int8Weight(self.qweight, scales)
        assert self.group_size is not None
        return Int4Weight(self.qweight, scales, self.zeros.to(SCALE_DTYPE), self.group_size)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The full weight [out, in], as the kernels see it."""
        packed = self.packed()
        dtype = dtype or self.anchor.dtype
        if isinstance(packed, Int8Weight):
            return dequantize_int8(packed, dtype)
        return dequantize_int4(packed, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight in the model's dtype: correct for any reader, but built on every access
        (so only for reading dtype/device or occasional use, never inside a loop)."""
        return self.dequantized()

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.method}, in={self.in_features}, out={self.out_features}{group}"


class QuantLinear(_Quantized):
    """y = x W^T (+ bias) with W stored int8 or int4; a drop-in for a bias-free or biased nn.Linear."""

    def __init__(
        self, packed: Int8Weight | Int4Weight, bias: torch.Tensor | None = None, *, dtype: torch.dtype
    ) -> None:
        super().__init__(packed, dtype)
        self.bias = nn.Parameter(bias.to(dtype), requires_grad=False) if bias is not None else None
        self._int4_cache: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if (
            x.device.type == "cpu"
            and rows.shape[0] <= KERNEL_MAX_ROWS
            and cpu_kernels_available()[self.method]
        ):
            out = self._cpu_kernel(_aligned(rows.to(torch.bfloat16)))
        else:
            compute = torch.bfloat16 if x.device.type == "cpu" else x.dtype
            out = F.linear(rows.to(compute), self.dequantized(compute))
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def _cpu_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "int8":
            weight = _aligned(self.qweight)  # a no-op unless someone swapped the buffer for a view
            return torch.ops.aten._weight_int8pack_mm(x, weight, self.scales.to(torch.bfloat16))
        packed, scales_and_zeros = self._int4_operands(x.device)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, self.group_size, scales_and_zeros)

    def _int4_operands(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The int4 kernel's tiled weight and its [K/g, N, 2] scales-and-zeros, built once per device."""
        if self._int4_cache is None or self._int4_cache[0] != device:
            codes = unpack_nibbles(self.qweight).to(torch.int32)
            tiled = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, _INT4_INNER_K_TILES)
            pairs = torch.stack((self.scales, self.zeros), dim=-1).to(torch.bfloat16)  # [N, K/g, 2]
            self._int4_cache = (device, tiled, pairs.transpose(0, 1).contiguous())
        return self._int4_cache[1], self._int4_cache[2]


class QuantEmbedding(_Quantized):
    """Embedding lookup from a quantized table: only the rows looked up are dequantized."""

    def __init__(self, packed: Int8Weight | Int4Weight, *, dtype: torch.dtype) -> None:
        super().__init__(packed, dtype)

    @property
    def embedding_dim(self) -> int:
        return self.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        dtype = self.anchor.dtype
        rows = self.qweight[ids]
        if self.method == "int8":
            return (rows.to(dtype) * self.scales[ids].to(dtype)[..., None]).to(dtype)
        assert self.group_size is not None
        codes = unpack_nibbles(rows).to(dtype)
        groups = codes.unflatten(-1, (-1, self.group_size)) - 8
        w = groups * self.scales[ids].to(dtype)[..., None] + self.zeros[ids].to(dtype)[..., None]
        return w.flatten(-2)
