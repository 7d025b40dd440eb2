"""AdamW with upstream OLMo's parameter groups (docs/format.md §6.1, §6.2).

Weight decay is decided per (module, direct parameter) from the module's type and the parameter's name,
so the same tensor lands in the same group however the model is wrapped. Each group carries upstream's
extra fields (`param_names`, `sharded`, `max_grad_norm`, `max_grad_norm_ratio`), which is what lets an
upstream `optim.safetensors` load into our optimizer and ours into upstream's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from olmo_cli.config.schema import TrainConfig
from olmo_cli.model.olmo import LayerNorm
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.clip import is_dtensor, scale_grads, total_grad_norm

__all__ = [
    "build_optimizer",
    "clip_and_step",
    "param_groups",
]

_NORMS: tuple[type[nn.Module], ...] = (LayerNorm, nn.LayerNorm, nn.RMSNorm)


def _decays(module: nn.Module, param_name: str, cfg: TrainConfig, full_name: str) -> bool:
    opt = cfg.optimizer
    if param_name.endswith("bias"):
        return opt.decay_norm_and_bias
    if param_name.endswith("weight"):
        if isinstance(module, nn.Linear):
            return True
        if isinstance(module, _NORMS):
            return opt.decay_norm_and_bias
        if isinstance(module, nn.Embedding):
            return opt.decay_embeddings
    # Upstream asserts every parameter was classified; a new module type must be given a rule here.
    raise ValueError(
        f"no weight-decay rule for parameter {full_name!r} of module type {type(module).__name__}"
    )


def param_groups(model: nn.Module, cfg: TrainConfig, *, sharded: bool | None = None) -> list[dict[str, Any]]:
    """Upstream's decay / no-decay groups, in that order, each with params sorted by (clean) name.

    Empty groups are left out, so a config that decays everything (OLMo-7B-0424) has a single group.
    `sharded` defaults to whether the parameters are DTensors (FSDP2).
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            # A tied parameter registered twice is optimized once, under its first name.
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = clean_param_name(f"{module_name}.{param_name}" if module_name else param_name)
            target = decay if _decays(module, param_name, cfg, full_name) else no_decay
            target[full_name] = param
    if sharded is None:
        sharded = any(is_dtensor(p) for p in (*decay.values(), *no_decay.values()))
    extra = {
        "sharded": sharded,
        "max_grad_norm": cfg.max_grad_norm,
        "max_grad_norm_ratio": cfg.max_grad_norm_ratio,
    }
    groups: list[dict[str, Any]] = []
    for params, overrides in ((decay, {}), (no_decay, {"weight_decay": 0.0})):
        if params:
            names = sorted(params)
            groups.append({"params": [params[n] for n in names], "param_names": names, **overrides, **extra})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, sharded: bool | None = None) -> torch.optim.AdamW:
    """torch's AdamW over `param_groups`, with the config's lr, betas, eps and weight decay.

    Always AdamW: `optimizer.name: lionw` (upstream's schema default) is reported to the user by the
    config layer's `not_acted_on` rather than refused. CPU parameters (plain or FSDP2-sharded) get
    torch's fused kernel, the same at every world size: torch's CPU default is a loop of separate ops
    per tensor, about 3x slower. Elsewhere `foreach`/`fused` are left to torch's per-device defaults.
    """
    opt = cfg.optimizer
    groups = param_groups(model, cfg, sharded=sharded)
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type == "cpu" for p in params)
    return torch.optim.AdamW(
        groups,
        lr=opt.learning_rate,
        betas=opt.betas,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        fused=fused or None,
    )


def clip_and_step(optim: torch.optim.Optimizer, *, lr: float, max_grad_norm: float | None) -> torch.Tensor:
    """One optimizer step in upstream's order (docs/format.md §6.5, §6.6); returns the pre-clip norm.

    1. clip every group with the `max_grad_norm` its group already holds, against the global norm;
    2. store this step's `lr` and `max_grad_norm` (from the schedules at the current position);
    3. step.
    So the clip threshold lags the schedule by one step, and right after the optimizer is built or restored
    it is the raw config value. The norm is returned even when nothing is clipped (for the metrics).
    """
    params = [p for group in optim.param_groups for p in group["params"]]
    norm = total_grad_norm(params)
    for group in optim.param_groups:
        if group.get("max_grad_norm") is not None:
            scale_grads(group["params"], group["max_grad_norm"], norm)
    for group in optim.param_groups:
        group["lr"] = lr
        group["max_grad_norm"] = max_grad_norm
    optim.step()
    return norm
