"""Upstream's load-time key rewrites, on hand-made state dicts."""

from __future__ import annotations

import pytest
import torch

from olmo_cli.model.state_dict import (
    normalize_upstream_keys,
    split_legacy_norms,
    strip_fsdp_prefixes,
    ungroup_blocks,
)


def tensor(value: float) -> torch.Tensor:
    return torch.full((2,), value)


def test_clean_keys_pass_through_unchanged() -> None:
    sd = {"transformer.wte.weight": tensor(1), "transformer.blocks.0.att_proj.weight": tensor(2)}
    out = normalize_upstream_keys(sd)
    assert list(out) == list(sd)
    assert all(out[key] is sd[key] for key in sd)


def test_fsdp_wrapper_parts_are_removed_everywhere() -> None:
    sd = {
        "_fsdp_wrapped_module.transformer.wte.weight": tensor(1),
        "_fsdp_wrapped_module.transformer.blocks.0._fsdp_wrapped_module.att_proj.weight": tensor(2),
    }
    assert list(strip_fsdp_prefixes(sd)) == ["transformer.wte.weight", "transformer.blocks.0.att_proj.weight"]


def test_legacy_shared_norm_becomes_two_copies() -> None:
    sd = {"transformer.blocks.3.norm.weight": tensor(1.5), "transformer.blocks.3.norm.bias": tensor(0.5)}
    out = split_legacy_norms(sd)
    assert set(out) == {
        "transformer.blocks.3.attn_norm.weight",
        "transformer.blocks.3.ff_norm.weight",
        "transformer.blocks.3.attn_norm.bias",
        "transformer.blocks.3.ff_norm.bias",
    }
    assert torch.equal(out["transformer.blocks.3.ff_norm.weight"], tensor(1.5))
    # Separate storage: one norm can train away from the other, and safetensors accepts them.
    assert (
        out["transformer.blocks.3.ff_norm.weight"].data_ptr()
        != out["transformer.blocks.3.attn_norm.weight"].data_ptr()
    )


def test_modern_norm_names_are_not_mistaken_for_legacy() -> None:
    sd = {
        "transformer.blocks.0.attn_norm.weight": tensor(1),
        "transformer.blocks.0.q_norm.weight": tensor(2),
        "transformer.ln_f.weight": tensor(3),
    }
    assert split_legacy_norms(sd) == sd


def test_block_groups_map_to_flat_blocks() -> None:
    sd = {"transformer.wte.weight": tensor(0)}
    for group in range(3):
        for index in range(2):
            for name in ("attn_out", "ff_out"):
                sd[f"transformer.block_groups.{group}.{index}.{name}.weight"] = tensor(10 * group + index)
    out = ungroup_blocks(sd)
    assert len(out) == len(sd)
    for group in range(3):
        for index in range(2):
            assert torch.equal(
                out[f"transformer.blocks.{2 * group + index}.ff_out.weight"], tensor(10 * group + index)
            )


def test_block_groups_without_group_zero_is_an_error() -> None:
    with pytest.raises(ValueError, match="block group"):
        ungroup_blocks({"transformer.block_groups.1.0.ff_out.weight": tensor(0)})


def test_all_rewrites_compose() -> None:
    sd = {
        "_fsdp_wrapped_module.transformer.block_groups.0.0.norm.weight": tensor(1),
        "_fsdp_wrapped_module.transformer.block_groups.0.0.attn_out.weight": tensor(2),
        "_fsdp_wrapped_module.transformer.block_groups.0.1.attn_out.weight": tensor(3),
        "_fsdp_wrapped_module.transformer.block_groups.1.1._fsdp_wrapped_module.norm.weight": tensor(4),
    }
    out = normalize_upstream_keys(sd)
    assert set(out) == {
        "transformer.blocks.0.attn_norm.weight",
        "transformer.blocks.0.ff_norm.weight",
        "transformer.blocks.0.attn_out.weight",
        "transformer.blocks.1.attn_out.weight",
        "transformer.blocks.3.attn_norm.weight",
        "transformer.blocks.3.ff_norm.weight",
    }
    assert torch.equal(out["transformer.blocks.3.ff_norm.weight"], tensor(4))
    assert "_fsdp_wrapped_module.transformer.block_groups.0.0.norm.weight" in sd  # input untouched
