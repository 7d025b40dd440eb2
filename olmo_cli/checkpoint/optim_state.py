"""An AdamW state dict as read from a checkpoint, in one canonical form.

Upstream writes two forms (docs/format.md §4.3): `state` keyed by parameter FQN (FSDP full optimizer
state dict, the usual one) or by integer id (plain torch), where `param_groups[g]["param_names"]` zipped
with `param_groups[g]["params"]` names the ids. Either may carry FSDP wrapper parts or older key layouts
in the names. We return the FQN form with our parameter names: `state[name]` and every group's `params`
(and `param_names`) as names, renamed with the same rewrites as the model's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from olmo_cli.errors import CheckpointError
from olmo_cli.model.state_dict import normalize_upstream_keys

__all__ = ["OLMO_GROUP_FIELDS", "normalize_optim_state"]

# The fields upstream adds to every torch param group; they travel with the optimizer state.
OLMO_GROUP_FIELDS = ("param_names", "sharded", "max_grad_norm", "max_grad_norm_ratio")


def _check_shape(raw: Any, source: str) -> tuple[dict[Any, Any], list[dict[str, Any]]]:
    if not isinstance(raw, Mapping) or "param_groups" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise CheckpointError(f"{source} is not an optimizer state dict (no 'param_groups'; found {found})")
    # The safetensors encoding drops an empty `state` dict, so a checkpoint taken before the first
    # optimizer step has none.
    state = raw.get("state", {})
    groups = raw["param_groups"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Mapping) for v in state.values()):
        raise CheckpointError(f"{source}: 'state' must map each parameter to a dict of tensors")
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        raise CheckpointError(f"{source}: 'param_groups' must be a list of dicts with 'params'")
    return dict(state), [dict(g) for g in groups]


def _id_names(groups: list[dict[str, Any]]) -> dict[int, str] | None:
    names: dict[int, str] = {}
    for group in groups:
        ids, group_names = group.get("params"), group.get("param_names")
        if not isinstance(group_names, list) or not isinstance(ids, list) or len(ids) != len(group_names):
            return None
        names.update(zip(ids, group_names, strict=True))
    return names


def _to_names(
    state: dict[Any, Any], groups: list[dict[str, Any]], source: str
) -> tuple[dict[Any, Any], list[str]]:
    if all(isinstance(key, str) for key in state) and all(
        isinstance(p, str) for g in groups for p in g["params"]
    ):
        return state, []
    names = _id_names(groups)
    if names is None or not all(key in names for key in state):
        return state, [
            f"{source}: optimizer state is keyed by integer ids without 'param_names'; left as ids"
        ]
    for group in groups:
        group["params"] = [names[i] for i in group["params"]]
    return {names[key]: value for key, value in state.items()}, []


def _rename_map(names: list[str]) -> dict[str, list[str]]:
    """old name -> new names (two for a legacy shared norm), via the model's own key rewrites."""
    # normalize_upstream_keys works on {name: tensor}; give each name a tensor holding its index and
    # read back which old name every new name came from.
    renamed = normalize_upstream_keys({name: torch.tensor(i) for i, name in enumerate(names)})
    out: dict[str, list[str]] = {name: [] for name in names}
    for new, index in renamed.items():
        out[names[int(index)]].append(new)
    return out


def _copy_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in entry.items()}


def normalize_optim_state(raw: Any, *, source: str) -> tuple[dict[str, Any], list[str]]:
    state, groups = _check_shape(raw, source)
    state, warnings = _to_names(state, groups, source)
    names = sorted(
        {k for k in state if isinstance(k, str)}
        | {p for g in groups for p in g["params"] if isinstance(p, str)}
    )
    if not names:
        return {"state": state, "param_groups": groups}, warnings
    renames = _rename_map(names)
    new_state: dict[Any, Any] = {}
    for key, entry in state.items():
        targets = renames.get(key, [key]) if isinstance(key, str) else [key]
        for i, target in enumerate(targets):
            new_state[target] = entry if i == 0 else _copy_entry(entry)
    for group in groups:
        for field in ("params", "param_names"):
            if isinstance(group.get(field), list):
                group[field] = [
                    n for p in group[field] for n in (renames.get(p, [p]) if isinstance(p, str) else [p])
                ]
    return {"state": new_state, "param_groups": groups}, warnings
