"""AdamW state in upstream OLMo's unsharded form, and back (docs/format.md §4.3, §4.7).

Upstream form: `{"state": {fqn: {"step": 0-dim fp32, "exp_avg", "exp_avg_sq"}}, "param_groups": [{torch's
AdamW hyper-parameters, "params": [fqn, ...], "param_names", "sharded", "max_grad_norm",
"max_grad_norm_ratio", ...}]}`. Files written by upstream may instead key `state` by integer ids (torch's own
form, mapped to names through each group's `param_names`) and may carry FSDP1's `_fsdp_wrapped_module.`
in names; both load. State is matched to live parameters by name, never by position.
"""

from __future__ import annotations

from typing import Any

import torch

from olmo_cli.checkpoint.optim_state import OLMO_GROUP_FIELDS
from olmo_cli.config.schema import OptimizerConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.clip import is_dtensor

__all__ = ["load_upstream_optimizer_state", "upstream_optimizer_state"]

# Group keys that say how torch runs the update on this machine, not what the update is: they come from
# the live optimizer, so a file written on a GPU with fused kernels loads on a CPU and vice versa.
_EXECUTION_KEYS = ("foreach", "fused", "capturable", "differentiable")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    # Collective for a DTensor: every rank exports the same parameters in the same order.
    return tensor.full_tensor() if is_dtensor(tensor) else tensor.detach()


def upstream_optimizer_state(optim: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, with full (unsharded) tensors.

    Moment tensors are returned without copying (as torch's `state_dict()` does); `step` is a fresh 0-dim
    fp32 tensor, since torch increments its own in place. DTensor (FSDP2) state is gathered whole onto
    every rank, a collective that needs the full state in each rank's memory: right for models whose
    optimizer state fits one device; beyond that, save sharded.
    """
    state: dict[str, dict[str, torch.Tensor]] = {}
    groups: list[dict[str, Any]] = []
    for group in optim.param_groups:
        names = [clean_param_name(n) for n in group["param_names"]]
        for name, param in zip(names, group["params"], strict=True):
            param_state = optim.state.get(param)
            if not param_state:
                continue  # never stepped: upstream has no entry either
            entry = {key: _full(value) for key, value in param_state.items() if key != "step"}
            entry["step"] = torch.tensor(float(param_state["step"]), dtype=torch.float32)
            state[name] = entry
        saved = {key: value for key, value in group.items() if key not in ("params", "param_names")}
        groups.append({**saved, "params": list(names), "param_names": list(names)})
    return {"state": state, "param_groups": groups}


def _saved_names(group: dict[str, Any], index: int) -> list[str]:
    names = group.get("param_names")
    if names is None and all(isinstance(p, str) for p in group["params"]):
        names = group["params"]
    if names is None or len(names) != len(group["params"]):
        raise CheckpointError(f"optimizer state param group {index} does not name its parameters")
    return [clean_param_name(n) for n in names]


def _state_by_name(state_dict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ids: dict[Any, str] = {}
    for index, group in enumerate(state_dict["param_groups"]):
        ids.update(zip(group["params"], _saved_names(group, index), strict=True))
    by_name = {}
    for key, value in state_dict["state"].items():
        if isinstance(key, str):
            by_name[clean_param_name(key)] = value
        elif key in ids:
            by_name[ids[key]] = value
        else:
            raise CheckpointError(f"optimizer state has an entry for parameter id {key} that no group lists")
    return by_name


def _matching_groups(saved: list[dict[str, Any]], live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(saved) == 1 and len(live) == 2:
        # A file from a run that decayed everything, loaded where some parameters are not decayed:
        # upstream duplicates the group and zeroes the no-decay copy's weight decay.
        return [dict(saved[0]), {**saved[0], "weight_decay": 0.0}]
    if len(saved) != len(live):
        raise CheckpointError(
            f"the optimizer state has {len(saved)} parameter groups but this run's optimizer has {len(live)}",
            hint="the checkpoint was written with different optimizer.decay_* settings or another model",
        )
    return saved


def _check_names(live: dict[str, torch.Tensor], saved: dict[str, dict[str, Any]]) -> None:
    if not saved:
        return  # an optimizer that never stepped (a step-0 checkpoint): only hyper-parameters load
    details = [f"missing state for {n}" for n in sorted(live.keys() - saved.keys())[:5]]
    details += [f"state for unknown parameter {n}" for n in sorted(saved.keys() - live.keys())[:5]]
    for name in sorted(live.keys() & saved.keys()):
        for key, value in saved[name].items():
            if key != "step" and isinstance(value, torch.Tensor) and value.shape != live[name].shape:
                shapes = f"{tuple(value.shape)} in the file, {tuple(live[name].shape)} in the model"
                details.append(f"{name}.{key}: {shapes}")
    if details:
        raise CheckpointError(
            "the optimizer state does not match this model's parameters",
            details=details,
            hint="load a checkpoint of the same model configuration, or set reset_optimizer_state: true",
        )


def _to_live(value: Any, param: torch.Tensor, key: str) -> Any:
    if key == "step":
        return torch.tensor(float(value), dtype=torch.float32)
    if isinstance(value, torch.Tensor) and is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        # Every rank holds the full tensor, so each cuts its own shard: no communication.
        return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    return value


def load_upstream_optimizer_state(
    optim: torch.optim.Optimizer, state_dict: dict[str, Any], *, lr: float, cfg: OptimizerConfig
) -> None:
    """Loads upstream-form (or torch-form, name-carrying) AdamW state into a live optimizer.

    Per-group hyper-parameters (betas, eps, ...) come from the file, as torch loading does; `lr` is set to
    the schedule's value `lr` at the resume position, `initial_lr` and the weight decay of decayed groups
    to the config's, and the OLMo group fields to the live optimizer's (§4.3, §4.7). The optimizer takes
    the dict's tensors without copying: pass a dict you are done with, such as one read from a file.
    """
    live_groups = optim.param_groups
    saved_groups = _matching_groups(state_dict["param_groups"], live_groups)
    saved_state = _state_by_name(state_dict)
    live_params = {
        clean_param_name(n): p
        for g in live_groups
        for n, p in zip(g["param_names"], g["params"], strict=True)
    }
    _check_names(live_params, saved_state)

    torch_state: dict[int, dict[str, Any]] = {}
    torch_groups: list[dict[str, Any]] = []
    next_id = 0
    for live, saved in zip(live_groups, saved_groups, strict=True):
        ids = list(range(next_id, next_id + len(live["params"])))
        next_id += len(ids)
        for param_id, name, param in zip(ids, live["param_names"], live["params"], strict=True):
            entry = saved_state.get(clean_param_name(name))
            if entry:
                torch_state[param_id] = {k: _to_live(v, param, k) for k, v in entry.items()}
        group = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
        group.update({k: live[k] for k in (*_EXECUTION_KEYS, *OLMO_GROUP_FIELDS) if k in live})
        group["params"] = ids
        torch_groups.append(group)
    optim.load_state_dict({"state": torch_state, "param_groups": torch_groups})
    for group in optim.param_groups:
        group["lr"] = lr
        group["initial_lr"] = cfg.learning_rate
        if group.get("weight_decay", 0.0) > 0.0:
            group["weight_decay"] = cfg.weight_decay
