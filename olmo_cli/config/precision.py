"""The precisions a run trains in (`TrainConfig.precision`) and the dtype each computes in.

One table for the trainer's autocast, FSDP's mixed-precision policy, the peak FLOP/s a run is measured
against and the memory plan. The table names dtypes as strings so that config-only arithmetic (`olmo
presets show`) needs no torch; `autocast_dtype` and `compute_dtype` import it when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from olmo_cli.config.schema import TrainConfig

__all__ = ["PRECISIONS", "Precision", "autocast_dtype", "compute_dtype", "precision_of"]


@dataclass(frozen=True)
class Precision:
    name: str  # the config's value
    dtype: str  # torch's name of the dtype matmuls, activations and logits are computed in
    short: str  # that dtype as the tables print it
    bytes: int  # per element of that dtype
    autocast: bool  # computed under torch.autocast (over fp32 master weights) rather than plainly in fp32
    label: str  # how `olmo presets show` names the regime


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("amp_bf16", "bfloat16", "bf16", 2, True, "bf16 mixed"),
        Precision("amp_fp16", "float16", "fp16", 2, True, "fp16 mixed"),
        Precision("fp32", "float32", "fp32", 4, False, "fp32"),
    )
}


def precision_of(cfg: TrainConfig) -> Precision:
    """The run's precision; an unset `precision` trains in fp32, as upstream does."""
    return PRECISIONS[cfg.precision or "fp32"]


def compute_dtype(cfg: TrainConfig) -> torch.dtype:
    """The dtype the run's matmuls run in: the autocast dtype, else float32."""
    import torch

    return getattr(torch, precision_of(cfg).dtype)


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of `cfg.precision` (amp_bf16 also on CPU, where bf16 matmuls are much faster);
    None for fp32."""
    return compute_dtype(cfg) if precision_of(cfg).autocast else None
