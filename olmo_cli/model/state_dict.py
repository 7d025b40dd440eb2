"""Key rewrites that let any upstream OLMo unsharded model state dict load into `OLMo`.

Upstream checkpoints from different eras name the same tensors differently: FSDP1 wrapper prefixes,
one shared `norm` per block in early code, and `block_groups` when blocks were grouped for wrapping.
These are pure functions over `{key: tensor}` dicts; they never touch the input dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "clean_param_name",
    "normalize_upstream_keys",
    "strip_fsdp_prefixes",
    "split_legacy_norms",
    "ungroup_blocks",
]

_FSDP_PART = "_fsdp_wrapped_module."
# Prefixes that wrappers insert into parameter names: FSDP1 (upstream's checkpoints carry it), activation
# checkpointing and torch.compile. Names are compared without them so grouping and checkpoint keys do
# not depend on how the model happens to be wrapped.
_WRAPPER_PREFIXES = (_FSDP_PART, "_checkpoint_wrapped_module.", "_orig_mod.")
_OUTER_WRAPPER = "module."
_LEGACY_NORM = re.compile(r"^(?P<head>transformer\..*\.)norm\.(?P<leaf>weight|bias)$")
_GROUPED = re.compile(r"^transformer\.block_groups\.(?P<group>\d+)\.(?P<index>\d+)\.(?P<rest>.*)$")
_GROUP_ZERO_ATTN_OUT = re.compile(r"^transformer\.block_groups\.0\.\d+\.attn_out\.weight$")


def clean_param_name(name: str) -> str:
    """A parameter's name without the parts wrappers (FSDP1, activation checkpointing, compile) add, and
    without the leading `module.` of DDP and of upstream's `distributed_strategy: single` wrapper (whose
    optimizer files name parameters `module.transformer...`)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name.removeprefix(_OUTER_WRAPPER)


def strip_fsdp_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes every `_fsdp_wrapped_module.` that FSDP1 wrapping left inside the keys."""
    return {key.replace(_FSDP_PART, ""): value for key, value in state_dict.items()}


def split_legacy_norms(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Early blocks shared one `norm` for attention and MLP; give each its own copy.

    Copies, not aliases, so the result can be saved to formats that refuse shared storage and the two
    norms can diverge when training resumes.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _LEGACY_NORM.match(key)
        if match is None:
            out[key] = value
            continue
        head, leaf = match["head"], match["leaf"]
        out[f"{head}attn_norm.{leaf}"] = value
        out[f"{head}ff_norm.{leaf}"] = value.clone()
    return out


def ungroup_blocks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`transformer.block_groups.{g}.{k}.X` -> `transformer.blocks.{g*G+k}.X`.

    G, the group size, is the number of blocks in group 0 (counted by their `attn_out.weight`), as
    upstream infers it.
    """
    group_size = sum(1 for key in state_dict if _GROUP_ZERO_ATTN_OUT.match(key))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _GROUPED.match(key)
        if match is None:
            out[key] = value
            continue
        if group_size == 0:
            raise ValueError(f"key {key!r} is in a block group, but group 0 has no attn_out.weight")
        block = int(match["group"]) * group_size + int(match["index"])
        out[f"transformer.blocks.{block}.{match['rest']}"] = value
    return out


def normalize_upstream_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All of upstream's load-time compat rewrites, in upstream's order; already-clean keys pass through."""
    return ungroup_blocks(split_legacy_norms(strip_fsdp_prefixes(state_dict)))
