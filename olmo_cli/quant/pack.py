"""Quantizing one weight matrix [out_features, in_features], and the exact inverse of what is stored.

int8: symmetric, one scale per output row: w ~= q * scale, q in [-127, 127].
int4: asymmetric, one (scale, zero) pair per group of `group_size` consecutive inputs of a row, in the
convention of torch's int4 kernels (tinygemm): w ~= (q - 8) * scale + zero, q in [0, 15]. Two 4-bit
values share a byte: the even column in the low nibble, the odd column in the high one.

Scales and zeros are stored in bfloat16, the dtype the CPU kernels take them in, and q is chosen
against the rounded values, so what the kernels compute is exactly what `dequantize_*` gives.
Everything here is deterministic: the same weights give the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SCALE_DTYPE",
    "Int4Weight",
    "Int8Weight",
    "dequantize_int4",
    "dequantize_int8",
    "pack_nibbles",
    "quantize_int4",
    "quantize_int8",
    "unpack_nibbles",
]

SCALE_DTYPE = torch.bfloat16
INT4_MID = 8  # the kernels' fixed offset: q = 8 stands for `zero`
# Fractions of each group's [min, max] range tried as the clipping range: clipping a few outliers
# often lowers the group's total squared error (the same search llama.cpp's and GPTQ-style
# quantizers do, kept to a fixed grid so the result is deterministic).
_INT4_RANGE_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
_TINY = 1e-12


@dataclass
class Int8Weight:
    qweight: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # bf16 [N]


@dataclass
class Int4Weight:
    qweight: torch.Tensor  # uint8 [N, K/2], two values a byte
    scales: torch.Tensor  # bf16 [N, K/group_size]
    zeros: torch.Tensor  # bf16 [N, K/group_size]
    group_size: int


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 (absmax / 127)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=_TINY).to(SCALE_DTYPE)
    q = torch.round(w / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return Int8Weight(q.contiguous(), scales.contiguous())


def dequantize_int8(q: Int8Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if dtype in (torch.float32, torch.bfloat16):
        # Codes are exact in bf16 and the product of two bf16 values is rounded once either way, so
        # this equals the fp32 product rounded to bf16, without an fp32 copy of the whole matrix.
        return q.qweight.to(dtype) * q.scales.to(dtype)[:, None]
    return (q.qweight.float() * q.scales.float()[:, None]).to(dtype)


def _int4_codes(
    w: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, bf16 scales and zeros for groups w [N, G, g] clipped to [low, high] ([N, G])."""
    scales = ((high - low) / 15).clamp(min=_TINY).to(SCALE_DTYPE)
    zeros = (low + INT4_MID * scales.float()).to(SCALE_DTYPE)
    q = torch.round((w - zeros.float()[..., None]) / scales.float()[..., None]) + INT4_MID
    return q.clamp(0, 15), scales, zeros


def quantize_int4(weight: torch.Tensor, group_size: int) -> Int4Weight:
    """Asymmetric group-wise int4; per group, the clipping range of least squared error on the grid."""
    n, k = weight.shape
    if k % group_size or group_size % 2:
        raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}")
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    centre = (lo + hi) / 2
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    best_err: torch.Tensor | None = None
    for fraction in _INT4_RANGE_GRID:
        half = (hi - lo) / 2 * fraction
        q, scales, zeros = _int4_codes(w, centre - half, centre + half)
        err = (((q - INT4_MID) * scales.float()[..., None] + zeros.float()[..., None] - w) ** 2).sum(-1)
        if best is None or best_err is None:
            best, best_err = (q, scales, zeros), err
            continue
        better = err < best_err  # strict: ties keep the wider range, so the choice is deterministic
        best = (
            torch.where(better[..., None], q, best[0]),
            torch.where(better, scales, best[1]),
            torch.where(better, zeros, best[2]),
        )
        best_err = torch.minimum(err, best_err)
    assert best is not None
    q, scales, zeros = best
    return Int4Weight(pack_nibbles(q.reshape(n, k).to(torch.uint8)), scales, zeros, group_size)


def dequantize_int4(q: Int4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    codes = unpack_nibbles(q.qweight).float()
    n, k = codes.shape
    groups = codes.reshape(n, k // q.group_size, q.group_size) - INT4_MID
    w = groups * q.scales.float()[..., None] + q.zeros.float()[..., None]
    return w.reshape(n, k).to(dtype)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [..., K] in 0..15 -> [..., K/2] bytes: even column low nibble, odd column high."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] bytes -> uint8 codes [..., K]."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)
