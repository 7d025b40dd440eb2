"""LoRA: low-rank adapters on the Linear layers of an OLMo model, and their file.

A target Linear (`att_proj`, `attn_out`, `ff_proj`, `ff_out` of every block) becomes a `LoRALinear`: the
same `weight` and `bias` parameters under the same names, plus `lora_A` [rank, in] and `lora_B`
[out, rank], computing

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T

B starts at zero, so an adapted model starts exactly where its base is. Every base parameter is frozen
(requires_grad False); the optimizer sees only A and B. Base parameter names do not change, so a base
checkpoint loads into an adapted model as it is, and the adapters are `<module>.lora_A.weight` /
`<module>.lora_B.weight` beside them.

The adapter file is a plain safetensors file of those tensors, its settings in the file's metadata
(format, rank, alpha, dropout, targets, the base checkpoint and a fingerprint of the base weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.config.schema import LoRAConfig
from olmo_cli.model.init import Constant, InitRule, Normal, init_tensor

__all__ = [
    "ADAPTER_FORMAT",
    "Adapter",
    "LoRALinear",
    "adapter_init_rule",
    "adapters_detached",
    "apply_lora",
    "base_fingerprint",
    "describe",
    "is_adapter_name",
    "merge_into",
    "parameter_counts",
    "read_adapter",
    "write_adapter",
]

ADAPTER_FORMAT = "olmo-lora/1"
_PARTS = ("lora_A", "lora_B")
_FINGERPRINT_SAMPLES = 4096  # values read per tensor: enough to tell bases apart, cheap at any size


class LoRALinear(nn.Linear):
    """An nn.Linear with a trainable low-rank update beside its (frozen) weight."""

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, rank: int, alpha: float, dropout: float
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        self.scaling = alpha / rank
        from olmo_cli.model.olmo import Dropout  # the model's: no kernel at p == 0

        self.lora_dropout = Dropout(dropout)
        self.lora_A = nn.Linear(in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def is_adapter_name(name: str) -> bool:
    """Whether a parameter name (wrapper prefixes or not) is a LoRA A or B matrix."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in _PARTS


def adapter_init_rule(name: str, shape: Iterable[int]) -> InitRule | None:
    """A: N(0, 1/in_features), so A x has the scale of x; B: zero. None for a parameter that is not an
    adapter (its rule comes from model/init.py)."""
    if not is_adapter_name(name):
        return None
    if name.split(".")[-2] == "lora_B":
        return Constant(0.0)
    fan_in = list(shape)[-1]
    return Normal(1.0 / math.sqrt(fan_in), None)


def _wrap(linear: nn.Linear, settings: LoRAConfig) -> LoRALinear:
    with torch.device("meta"):  # no throwaway copy of the weight, whatever its size
        new = LoRALinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            rank=settings.rank,
            alpha=settings.alpha,
            dropout=settings.dropout,
        )
    new.weight = linear.weight  # the same Parameter objects: nothing is copied, names stay
    new.bias = linear.bias
    for part in _PARTS:  # the adapters live where the weight does, in its dtype (initialized by the caller)
        getattr(new, part).to_empty(device=linear.weight.device).to(dtype=linear.weight.dtype)
    return new


def apply_lora(
    model: nn.Module, settings: LoRAConfig, *, generator: torch.Generator | None = None
) -> list[str]:
    """Replaces the target Linears of every block by LoRALinears and freezes everything else; returns the
    adapted module names. Apply it to the plain model, before checkpointing, compile and FSDP wrap the
    blocks. On a materialized model the adapters are initialized here (A random, B zero); on the meta
    device they are initialized with the rest of the model (`adapter_init_rule`)."""
    for param in model.parameters():
        param.requires_grad_(False)
    adapted = []
    blocks = model.transformer["blocks"]  # type: ignore[index]
    for index, block in enumerate(blocks):
        for target in settings.targets:
            linear = getattr(block, target)
            if not isinstance(linear, nn.Linear) or isinstance(linear, LoRALinear):
                raise ValueError(f"blocks.{index}.{target} is not a plain Linear; LoRA cannot adapt it")
            wrapped = _wrap(linear, settings)
            setattr(block, target, wrapped)
            name = f"transformer.blocks.{index}.{target}"
            adapted.append(name)
            if wrapped.lora_A.weight.is_meta:
                continue
            with torch.no_grad():
                for part in _PARTS:
                    param = getattr(wrapped, part).weight
                    rule = adapter_init_rule(f"{name}.{part}.weight", param.shape)
                    init_tensor(param, rule, generator)  # type: ignore[arg-type]
    return adapted


@contextlib.contextmanager
def adapters_detached(model: nn.Module) -> Iterator[None]:
    """Within the block the model's `named_parameters()` and `state_dict()` show the base parameters only,
    so a base checkpoint (which has no adapters) loads through the usual strict paths. The adapters stay
    in place, untouched, and come back on exit. Works on FSDP-wrapped models (their parameter registry is
    separate from the module tree)."""
    removed: list[tuple[LoRALinear, dict[str, nn.Module]]] = []
    for module in model.modules():
        if isinstance(module, LoRALinear):
            removed.append((module, {p: module._modules.pop(p) for p in _PARTS}))  # type: ignore[misc]
    try:
        yield
    finally:
        for module, parts in removed:
            module._modules.update(parts)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied parameters once. Under FSDP the counts are full sizes."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def base_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of base weights: every name and shape, and an evenly spaced sample of each tensor's
    fp32 values, independent of the order they come in. Computed from native names, so a base read from
    HF files hashes as its native source. Tensors are consumed one at a time (`named` may gather each)."""
    parts = []
    for name, tensor in named:
        if is_adapter_name(name):
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::stride][:_FINGERPRINT_SAMPLES].to("cpu", torch.float32).contiguous()
        part = hashlib.sha256(f"{name}:{list(tensor.shape)};".encode())
        part.update(sample.numpy().tobytes())
        parts.append((name, part.digest()))
    digest = hashlib.sha256()
    for _, part_digest in sorted(parts):
        digest.update(part_digest)
    return digest.hexdigest()[:16]


# ---- the adapter file -------------------------------------------------------------------------------


@dataclass
class Adapter:
    """An adapter file: A/B tensors by parameter name, the settings, and what it was trained on."""

    tensors: dict[str, torch.Tensor]
    settings: LoRAConfig
    base: str | None = None  # the base checkpoint the run loaded
    base_fingerprint: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other metadata (step, run)

    @property
    def modules(self) -> list[str]:
        return sorted({name.rsplit(".", 2)[0] for name in self.tensors})

    def metadata(self) -> dict[str, str]:
        meta = {
            "format": ADAPTER_FORMAT,
            "rank": str(self.settings.rank),
            "alpha": repr(self.settings.alpha),
            "dropout": repr(self.settings.dropout),
            "targets": ",".join(self.settings.targets),
            **self.extra,
        }
        if self.base is not None:
            meta["base"] = self.base
        if self.base_fingerprint is not None:
            meta["base_fingerprint"] = self.base_fingerprint
        return meta


def write_adapter(path: Path | str, adapter: Adapter) -> Path:
    """Writes the adapter atomically (temporary name, fsync, rename)."""
    from safetensors.torch import save

    from olmo_cli.atomic import atomic_write_bytes

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adapter.tensors.items()}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=adapter.metadata()))
    return path


def _settings_from(meta: Mapping[str, str], source: str) -> LoRAConfig:
    from olmo_cli.errors import CheckpointError

    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(
            f"{source} is not an olmo LoRA adapter (format {meta.get('format')!r}, expected "
            f"{ADAPTER_FORMAT!r})",
            hint="give the adapter.safetensors an `olmo finetune --lora-rank R` run wrote",
        )
    try:
        return LoRAConfig(
            rank=int(meta["rank"]),
            alpha=float(meta["alpha"]),
            dropout=float(meta["dropout"]),
            targets=meta["targets"].split(","),  # type: ignore[arg-type]
        )
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: damaged adapter settings ({e})") from None


def read_adapter(path: Path | str) -> Adapter:
    """Reads an adapter file; a file that is not one is a CheckpointError."""
    from safetensors import SafetensorError, safe_open

    from olmo_cli.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"adapter {path} does not exist" if not path.exists() else f"adapter {path} is not a file",
            hint="a LoRA run writes adapter.safetensors in its run folder",
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a safetensors file ({e})") from None
    settings = _settings_from(meta, str(path))
    bad = [name for name in tensors if not is_adapter_name(name)]
    if bad or not tensors:
        raise CheckpointError(f"{path} holds tensors that are not LoRA matrices: {bad[:3] or 'none'}")
    known = {"format", "rank", "alpha", "dropout", "targets", "base", "base_fingerprint"}
    extra = {k: v for k, v in meta.items() if k not in known}
    return Adapter(tensors, settings, meta.get("base"), meta.get("base_fingerprint"), extra)


def merge_into(state: dict[str, torch.Tensor], adapter: Adapter) -> dict[str, torch.Tensor]:
    """Base weights with the adapter folded in: W + (alpha / rank) * B @ A, computed in fp32 (or W's own
    wider dtype) per module.
    Returns a new dict (other tensors shared with `state`); raises ValueError on a module or shape the
    base does not have."""
    merged = dict(state)
    scale = adapter.settings.scaling
    for module in adapter.modules:
        key = f"{module}.weight"
        a = adapter.tensors.get(f"{module}.lora_A.weight")
        b = adapter.tensors.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise ValueError(f"the adapter has only one of the A and B matrices of {module}")
        if key not in state:
            raise ValueError(f"the base has no {key}")
        weight = state[key]
        if (b.shape[0], a.shape[1]) != tuple(weight.shape) or a.shape[0] != b.shape[1]:
            shapes = f"A {list(a.shape)}, B {list(b.shape)}, weight {list(weight.shape)}"
            raise ValueError(f"{module}: the adapter does not fit the base ({shapes})")
        exact = torch.promote_types(weight.dtype, torch.float32)  # fp32 at least, never less than W's
        delta = b.to(exact) @ a.to(exact)
        merged[key] = (weight.to(exact) + scale * delta).to(weight.dtype)
    return merged


def describe(adapter: Adapter) -> dict[str, Any]:
    """The adapter's settings as plain data (for --json and messages)."""
    params = sum(t.numel() for t in adapter.tensors.values())
    return {**adapter.metadata(), **json.loads(adapter.settings.model_dump_json()), "parameters": params}
