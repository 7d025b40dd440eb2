"""Files made the way upstream OLMo makes them, written plainly and independently of olmo_cli.checkpoint.

Upstream's `olmo/safetensors_util.py` names each entry base64url(pickle.dumps((key_path, pickled)))
and stores non-tensor leaves as uint8 tensors of their pickle; `.pt` files are plain `torch.save`.
"""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from tests._fixtures import model_config

TINY = model_config(
    d_model=16, n_heads=2, vocab_size=50, embedding_size=64, weight_tying=False, max_sequence_length=32
)

TINY_CONFIG_YAML = """\
run_name: tiny
seed: 6198
global_train_batch_size: 4
model:
  d_model: 16
  n_heads: 2
  n_layers: 2
  max_sequence_length: 32
  weight_tying: false
"""


def upstream_key(path: tuple[Any, ...], pickled: bool, protocol: int = 4) -> str:
    return base64.urlsafe_b64encode(pickle.dumps((path, pickled), protocol=protocol)).decode("ascii")


def upstream_flatten(nested: dict[Any, Any], protocol: int = 4) -> dict[str, torch.Tensor]:
    """Upstream's flatten_dict + encode_key, written out longhand."""
    flat: dict[str, torch.Tensor] = {}

    def walk(d: dict[Any, Any], prefix: tuple[Any, ...]) -> None:
        for key, value in d.items():
            path = prefix + (key,)
            if isinstance(value, torch.Tensor):
                flat[upstream_key(path, False, protocol)] = value
            elif isinstance(value, dict):
                walk(value, path)
            else:
                data = bytearray(pickle.dumps(value, protocol=protocol))
                flat[upstream_key(path, True, protocol)] = torch.frombuffer(data, dtype=torch.uint8)

    walk(nested, ())
    return flat


def write_upstream_safetensors(path: Path, nested: dict[Any, Any], protocol: int = 4) -> None:
    safetensors.torch.save_file(upstream_flatten(nested, protocol), str(path))


def tiny_model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights with exactly the tiny model's parameter names and shapes (docs/format.md §1.1)."""
    g = torch.Generator().manual_seed(seed)
    d, f, v = TINY.d_model, TINY.mlp_hidden, TINY.padded_vocab_size
    shapes = {"transformer.wte.weight": (v, d), "transformer.ff_out.weight": (v, d)}
    for i in range(TINY.n_layers):
        shapes[f"transformer.blocks.{i}.att_proj.weight"] = (3 * d, d)
        shapes[f"transformer.blocks.{i}.attn_out.weight"] = (d, d)
        shapes[f"transformer.blocks.{i}.ff_proj.weight"] = (f, d)
        shapes[f"transformer.blocks.{i}.ff_out.weight"] = (d, f // 2)
    return {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}


def adamw_param_group(params: list[Any], names: list[str], weight_decay: float = 0.1) -> dict[str, Any]:
    """A param group as upstream's OLMo optimizer saves it: torch AdamW fields plus OLMo's own."""
    return {
        "lr": 4e-4,
        "betas": (0.9, 0.95),
        "eps": 1e-5,
        "weight_decay": weight_decay,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "params": params,
        "param_names": names,
        "sharded": False,
        "max_grad_norm": 1.0,
        "max_grad_norm_ratio": None,
        "initial_lr": 4e-4,
    }


def adamw_entry(tensor: torch.Tensor, step: float) -> dict[str, torch.Tensor]:
    return {
        "step": torch.tensor(step),
        "exp_avg": torch.full_like(tensor, 0.25),
        "exp_avg_sq": torch.full_like(tensor, 0.0625),
    }
