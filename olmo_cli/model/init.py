"""Initialization schemes of upstream OLMo: `mitchell` (the OLMo-1 presets), `normal`, `full_megatron`.

Every parameter's rule is decided from its upstream name alone (`init_rule`), so the same table serves
a plain model, a compiled or checkpoint-wrapped one, and a reader who wants to see what a scheme does.
Bit-equality with upstream's RNG order is not a goal; the distribution of every tensor is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from olmo_cli.config.schema import ModelConfig

__all__ = ["Normal", "Constant", "init_rule", "init_tensor", "init_weights", "SUPPORTED_INIT_FNS"]

SUPPORTED_INIT_FNS = ("mitchell", "normal", "full_megatron")

# Wrappers (torch.compile, activation checkpointing, FSDP1) insert these into parameter names.
_WRAPPER_PARTS = re.compile(r"(_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)\.")
_NORM_WEIGHT = re.compile(r"(^|\.)(attn_norm|ff_norm|q_norm|k_norm|emb_norm|ln_f)\.weight$")
_BLOCK_WEIGHT = re.compile(
    r"(^|\.)blocks\.(?P<layer>\d+)\.(?P<module>att_proj|ff_proj|attn_out|ff_out)\.weight$"
)
_TOP_WEIGHT = re.compile(r"(^|\.)transformer\.(?P<module>wte|wpe|ff_out)\.weight$")


@dataclass(frozen=True)
class Normal:
    """N(0, std^2), truncated to the absolute interval [-cutoff_factor*std, +cutoff_factor*std] if set."""

    std: float
    cutoff_factor: float | None

    @property
    def bound(self) -> float | None:
        return None if self.cutoff_factor is None else self.cutoff_factor * self.std


@dataclass(frozen=True)
class Constant:
    value: float


InitRule = Normal | Constant


def init_rule(name: str, cfg: ModelConfig) -> InitRule:
    """The rule for the parameter called `name` (an upstream state-dict key) under `cfg.init_fn`."""
    name = _WRAPPER_PARTS.sub("", name)
    if name.endswith(".bias"):
        return Constant(0.0)
    if _NORM_WEIGHT.search(name):
        return Constant(1.0)
    if cfg.init_fn not in SUPPORTED_INIT_FNS:
        raise ValueError(
            f"init_fn {cfg.init_fn!r} is not implemented; use one of {', '.join(SUPPORTED_INIT_FNS)}"
        )
    if match := _BLOCK_WEIGHT.search(name):
        return _block_rule(match["module"], int(match["layer"]), cfg)
    if match := _TOP_WEIGHT.search(name):
        return _top_rule(match["module"], cfg)
    raise ValueError(f"no initialization rule for parameter {name!r}")


def _cutoff(cfg: ModelConfig) -> float | None:
    # Only `normal` may be untruncated; the other schemes default to 3 std.
    if cfg.init_fn == "normal":
        return cfg.init_cutoff_factor
    return cfg.init_cutoff_factor or 3.0


def _top_rule(module: str, cfg: ModelConfig) -> Normal:
    d = cfg.d_model
    if cfg.init_fn == "mitchell":
        std = 1 / math.sqrt(d)
        if module == "wte" and cfg.emb_init_std is not None:
            std = cfg.emb_init_std
    elif cfg.init_fn == "normal":
        std = cfg.init_std
        if module == "wte" and cfg.emb_init_std is not None:
            std = cfg.emb_init_std
    else:  # full_megatron
        if module == "ff_out":
            std = 1 / math.sqrt(d)
        elif module == "wte" and cfg.emb_init_std is not None:
            std = cfg.emb_init_std
        elif module == "wte" and cfg.scale_emb_init:
            std = cfg.init_std * math.sqrt(d)
        else:
            std = cfg.init_std
    return Normal(std, _cutoff(cfg))


def _block_rule(module: str, layer: int, cfg: ModelConfig) -> Normal:
    if cfg.init_fn == "normal":
        return Normal(cfg.init_std, _cutoff(cfg))
    if module in ("att_proj", "ff_proj"):
        std = 1 / math.sqrt(cfg.d_model) if cfg.init_fn == "mitchell" else cfg.init_std
    elif cfg.init_fn == "full_megatron":
        # Residual out-projections shrink with depth so the stream's variance stays bounded.
        std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    else:  # mitchell: scaled by fan-in and by the layer's depth
        fan_in = cfg.d_model if module == "attn_out" else cfg.mlp_out_width
        std = 1 / math.sqrt(2 * fan_in * (layer + 1))
    return Normal(std, _cutoff(cfg))


def init_tensor(param: torch.Tensor, rule: InitRule, generator: torch.Generator | None) -> None:
    """Fills `param` in place by `rule`, drawing from `generator` (the global RNG when None)."""
    if isinstance(rule, Constant):
        nn.init.constant_(param, rule.value)
    elif rule.bound is None:
        nn.init.normal_(param, mean=0.0, std=rule.std, generator=generator)
    else:
        nn.init.trunc_normal_(param, mean=0.0, std=rule.std, a=-rule.bound, b=rule.bound, generator=generator)


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig, generator: torch.Generator | None = None) -> None:
    """Initializes every parameter of an OLMo model in place (tied weights once) per `cfg.init_fn`."""
    for name, param in model.named_parameters():
        init_tensor(param, init_rule(name, cfg), generator)
