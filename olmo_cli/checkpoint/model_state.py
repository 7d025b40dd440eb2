"""A model state dict as read from a checkpoint: checked, renamed to our parameter names, fp32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from olmo_cli.config.schema import ModelConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.state_dict import normalize_upstream_keys

__all__ = ["check_model_state", "expected_model_shapes", "normalize_model_state"]

_SHOW = 5  # how many offending keys an error names


def normalize_model_state(raw: Any, *, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Flat {name: tensor} with upstream's compat key rewrites applied and floats upcast to fp32.

    Upstream stores fp32 master weights; anything else (a bf16 export) is upcast with a warning.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{source} does not hold a model state dict (found {type(raw).__name__})")
    bad = [
        key for key, value in raw.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if bad:
        example = bad[0]
        raise CheckpointError(
            f"{source} is not a flat {{parameter name: tensor}} model state: entry {example!r} holds a "
            f"{type(raw[example]).__name__}",
            hint="an unsharded OLMo model file maps parameter names straight to tensors",
        )
    state = normalize_upstream_keys(raw)
    warnings: list[str] = []
    upcast = sorted(
        {str(t.dtype) for t in state.values() if t.is_floating_point() and t.dtype != torch.float32}
    )
    if upcast:
        warnings.append(f"{source}: weights stored as {', '.join(upcast)} were upcast to float32")
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, warnings


def expected_model_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The parameter names and shapes `OLMo(cfg)` has, without allocating it."""
    from olmo_cli.model.olmo import build_model

    model = build_model(cfg, device="meta")
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _listing(title: str, lines: list[str]) -> list[str]:
    more = [f"  ... and {len(lines) - _SHOW} more"] if len(lines) > _SHOW else []
    return [f"{title}:", *(f"  {line}" for line in lines[:_SHOW]), *more] if lines else []


def check_model_state(
    state: Mapping[str, torch.Tensor], cfg: ModelConfig, *, source: str = "checkpoint"
) -> None:
    """Raises CheckpointError naming the first few missing, unexpected and misshapen parameters."""
    expected = expected_model_shapes(cfg)
    missing = [f"{k} {list(shape)}" for k, shape in expected.items() if k not in state]
    unexpected = [f"{k} {list(v.shape)}" for k, v in state.items() if k not in expected]
    misshapen = [
        f"{k}: checkpoint {list(v.shape)}, model {list(expected[k])}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if not (missing or unexpected or misshapen):
        return
    counts = ", ".join(
        f"{len(items)} {label}"
        for items, label in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (misshapen, "with another shape"),
        )
        if items
    )
    hint = (
        "build the model from the config.yaml saved with the checkpoint (d_model, n_layers, "
        "weight_tying, embedding_size must match what it was trained with)"
    )
    if any(".lora_A." in k or ".lora_B." in k for k in state):
        hint = (
            "this is a LoRA finetune checkpoint: fold the adapters into the base weights first with "
            "`olmo finetune merge RUN_DIR --output DIR`, then use DIR"
        )
    raise CheckpointError(
        f"{source} does not fit the model config: {counts} parameter(s)",
        details=[
            *_listing("missing", missing),
            *_listing("unexpected", unexpected),
            *_listing("shape differs", misshapen),
        ],
        hint=hint,
    )
