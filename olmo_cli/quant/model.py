"""From a model state to quantized tensors, and from quantized tensors to a working `OLMo`.

Tensor names: a quantized module `M` (say `transformer.blocks.0.att_proj`) is stored as `M.qweight`,
`M.scales` (and `M.zeros` for int4) in place of `M.weight`; its bias, if any, stays `M.bias` in full
precision, as does every tensor that is not quantized. With tied embeddings and a quantized embedding,
the output layer reads the same quantized table: the built model gets a `transformer.ff_out` QuantLinear
sharing the embedding's buffers (and a model config copy with `weight_tying: false`, so `forward` uses
it), so the logits come from the int8/int4 kernels instead of a dequantized copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from olmo_cli.config.schema import ModelConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.olmo import OLMo, build_model
from olmo_cli.quant.modules import QuantEmbedding, QuantLinear
from olmo_cli.quant.pack import SCALE_DTYPE, Int4Weight, Int8Weight, quantize_int4, quantize_int8
from olmo_cli.quant.settings import QuantLayout, QuantSettings

__all__ = ["build_quantized_model", "check_quantized_tensors", "quantizable_modules", "quantize_state"]

EMBEDDING = "transformer.wte"
_PACKED_PARTS = ("qweight", "scales", "zeros")
_SHOW = 6


def quantizable_modules(cfg: ModelConfig, *, embeddings: bool) -> list[str]:
    """Every Linear module of the model, plus the token embedding when `embeddings`."""
    model = build_model(cfg, device="meta")
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return ([EMBEDDING] if embeddings else []) + names


def _method_for(weight: torch.Tensor, settings: QuantSettings) -> str:
    # A row length the group size does not divide cannot be int4 here; int8 is the safe fallback.
    if settings.method == "int4" and weight.shape[1] % (settings.group_size or 1) == 0:
        return "int4"
    return "int8"


def quantize_state(
    state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    settings: QuantSettings,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors to store, {module: method}) for a full-precision native state dict."""
    targets = set(quantizable_modules(cfg, embeddings=settings.embeddings))
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, str] = {}
    for done, (name, value) in enumerate(state.items(), 1):
        module, _, leaf = name.rpartition(".")
        if module in targets and leaf == "weight":
            method = _method_for(value, settings)
            packed: Int8Weight | Int4Weight
            if method == "int4":
                packed = quantize_int4(value, settings.group_size or 0)
                tensors[f"{module}.zeros"] = packed.zeros
            else:
                packed = quantize_int8(value)
            tensors[f"{module}.qweight"] = packed.qweight
            tensors[f"{module}.scales"] = packed.scales
            modules[module] = method
        else:
            tensors[name] = value.detach().float().contiguous()
        if progress is not None:
            progress(done, len(state))
    return tensors, modules


def _packed_spec(
    method: str, rows: int, cols: int, group: int | None
) -> dict[str, tuple[torch.dtype, tuple]]:
    if method == "int8":
        return {"qweight": (torch.int8, (rows, cols)), "scales": (SCALE_DTYPE, (rows,))}
    groups = cols // (group or 1)
    return {
        "qweight": (torch.uint8, (rows, cols // 2)),
        "scales": (SCALE_DTYPE, (rows, groups)),
        "zeros": (SCALE_DTYPE, (rows, groups)),
    }


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def check_quantized_tensors(
    tensors: Mapping[str, torch.Tensor], layout: QuantLayout, cfg: ModelConfig, *, source: str
) -> None:
    """Raises CheckpointError unless `tensors` are exactly what `layout` and `cfg` say they must be."""
    from olmo_cli.checkpoint.model_state import expected_model_shapes

    expected = expected_model_shapes(cfg)
    problems: list[str] = []
    accounted: set[str] = set()
    for module, method in layout.modules.items():
        shape = expected.get(f"{module}.weight")
        if shape is None or len(shape) != 2:
            problems.append(f"{module}: the model config has no such Linear or embedding")
            continue
        group = layout.settings.group_size
        if method == "int4" and (group is None or shape[1] % group):
            problems.append(f"{module}: {shape[1]} inputs cannot be int4 in groups of {group}")
            continue
        for part, (dtype, want) in _packed_spec(method, *shape, group).items():
            key = f"{module}.{part}"
            accounted.add(key)
            found = tensors.get(key)
            if found is None:
                problems.append(f"{key} is missing ({method} needs it)")
            elif found.dtype != dtype or tuple(found.shape) != want:
                wanted = f"{str(dtype).removeprefix('torch.')} {list(want)}"
                problems.append(f"{key} is {_describe(found)}; {method} needs {wanted}")
    for name, shape in expected.items():
        if name.rpartition(".")[0] in layout.modules and name.endswith(".weight"):
            continue
        accounted.add(name)
        found = tensors.get(name)
        if found is None:
            problems.append(f"{name} {list(shape)} is missing")
        elif tuple(found.shape) != shape or not found.is_floating_point():
            problems.append(f"{name} is {_describe(found)}; the model needs float {list(shape)}")
    problems += [
        f"{name} ({_describe(tensors[name])}) is not part of this model"
        for name in tensors
        if name not in accounted
    ]
    if problems:
        more = [f"... and {len(problems) - _SHOW} more"] if len(problems) > _SHOW else []
        raise CheckpointError(
            f"{source} does not match its quantization record ({layout.settings.method}): "
            f"{len(problems)} problem(s)",
            details=problems[:_SHOW] + more,
            hint="the weights and quantization.json do not belong together; quantize the original "
            "checkpoint again (olmo quantize CKPT --method ... --output DIR)",
        )


def _packed(tensors: Mapping[str, torch.Tensor], module: str, method: str, group: int | None):
    if method == "int8":
        return Int8Weight(tensors[f"{module}.qweight"], tensors[f"{module}.scales"])
    return Int4Weight(
        tensors[f"{module}.qweight"], tensors[f"{module}.scales"], tensors[f"{module}.zeros"], group or 0
    )


def build_quantized_model(
    cfg: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    layout: QuantLayout,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    source: str = "quantized checkpoint",
) -> OLMo:
    """An eval-mode OLMo computing with the quantized tensors; full-precision tensors in `dtype`."""
    check_quantized_tensors(tensors, layout, cfg, source=source)
    model = build_model(cfg, device="meta")
    group = layout.settings.group_size
    replaced: set[str] = set()
    for module, method in layout.modules.items():
        packed = _packed(tensors, module, method, group)
        parent_name, _, child = module.rpartition(".")
        if isinstance(model.get_submodule(module), nn.Embedding):
            new: nn.Module = QuantEmbedding(packed, dtype=dtype)
        else:
            new = QuantLinear(packed, tensors.get(f"{module}.bias"), dtype=dtype)
            replaced.add(f"{module}.bias")
        _replace(model.get_submodule(parent_name), child, new)
        replaced.update(f"{module}.{part}" for part in _PACKED_PARTS)
    if cfg.weight_tying and EMBEDDING in layout.modules:
        embedding = model.transformer["wte"]
        assert isinstance(embedding, QuantEmbedding)
        model.transformer["ff_out"] = QuantLinear(embedding.packed(), dtype=dtype)
        model.config = cfg.model_copy(update={"weight_tying": False})
    rest = {k: v.to(dtype) for k, v in tensors.items() if k not in replaced}
    model.load_state_dict(rest, strict=False, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # check_quantized_tensors makes this unreachable; a clear message if it ever is not
        raise CheckpointError(f"{source}: no values for {', '.join(left[:_SHOW])}")
    return model.to(device=device).eval()


def _replace(parent: nn.Module, child: str, new: nn.Module) -> None:
    if isinstance(parent, nn.ModuleDict):
        parent[child] = new
    else:
        setattr(parent, child, new)
