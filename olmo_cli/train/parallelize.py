"""Parallelism applied to a plain OLMo from outside (torchtitan's shape): activation checkpointing, then
`torch.compile` per block, then FSDP2 `fully_shard` per block and at the root, then materialization and
initialization. The model never learns it was sharded.

Initialization draws every parameter whole, in the plain model's parameter order, from one seeded
generator, and each rank keeps its own shard of the draw. So for the same seed the full parameters are
those of `build_model(cfg.model, device, seed=seed)` at any world size, which is what makes an N-process
run reproduce a 1-process run.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from olmo_cli.config.activation_checkpointing import checkpointed_blocks
from olmo_cli.config.precision import autocast_dtype
from olmo_cli.config.schema import CompilerConfig, FSDPConfig, TrainConfig
from olmo_cli.errors import CheckpointError, ConfigError
from olmo_cli.model.init import init_rule, init_tensor
from olmo_cli.model.olmo import OLMo
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.clip import is_dtensor
from olmo_cli.world import World, broadcast_object

__all__ = [
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_fsdp",
    "full_model_state",
    "load_full_model_state",
    "mesh_shape",
    "microbatch_sync",
    "mixed_precision_policy",
    "parallelize_model",
]


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.transformer["blocks"]  # type: ignore[index,return-value]


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def _fine_grained(block: nn.Module, preserve_rng_state: bool) -> None:
    """Checkpoints the norms, the attention and the activation inside `block`, as upstream does.

    The norms and activation are wrapped as modules (their parameter names gain the wrapper's prefix, which
    `clean_param_name` removes); the attention is a method, so the instance gets a checkpointed version of
    it, and parameter names do not change.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.utils.checkpoint import checkpoint

    for name in ("attn_norm", "ff_norm", "act"):
        setattr(block, name, checkpoint_wrapper(getattr(block, name), preserve_rng_state=preserve_rng_state))
    attention = block.attention
    block.attention = functools.partial(  # type: ignore[method-assign]
        checkpoint, attention, use_reentrant=False, preserve_rng_state=preserve_rng_state
    )


def apply_activation_checkpointing(model: nn.Module, mode: str | None) -> None:
    """Non-reentrant activation checkpointing per `TrainConfig.activation_checkpointing` (None: off).

    It trades compute for memory and changes no number: RNG state is saved and restored for the recompute
    only when some dropout is active, as upstream does.
    """
    if mode is None:
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = _blocks(model)
    preserve = _has_dropout(model)
    if mode == "fine_grained":
        for block in blocks:
            _fine_grained(block, preserve)
        return
    for index in checkpointed_blocks(mode, len(blocks)):
        blocks[index] = checkpoint_wrapper(blocks[index], preserve_rng_state=preserve)


def apply_compile(model: nn.Module, cfg: CompilerConfig | None) -> None:
    """Compiles each block separately (identical blocks share one compiled graph) when configured."""
    if cfg is None:
        return
    blocks = _blocks(model)
    for index, block in enumerate(blocks):
        blocks[index] = torch.compile(
            block, mode=cfg.mode, fullgraph=cfg.fullgraph, backend=cfg.backend, dynamic=cfg.dynamic
        )


def mixed_precision_policy(cfg: TrainConfig) -> Any:
    """FSDP2's policy for `cfg.precision` and `cfg.fsdp.precision` (docs/format.md §8); None for plain fp32.

    `mixed`: parameters gathered in the autocast dtype, gradients reduced in fp32; `pure`: both in the
    autocast dtype. The sharded (master) parameters stay fp32 either way. Inputs are not cast: the RoPE
    tables a block receives stay fp32, as upstream computes RoPE.
    """
    dtype = autocast_dtype(cfg)
    if dtype is None or cfg.fsdp.precision is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    reduce_dtype = torch.float32 if cfg.fsdp.precision == "mixed" else dtype
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)


def mesh_shape(cfg: FSDPConfig, world_size: int) -> tuple[int, ...]:
    """The device mesh for `sharding_strategy`: (shards,) for FULL_SHARD / SHARD_GRAD_OP, and
    (replicas, shards) for the hybrid strategies (NO_SHARD is hybrid with shard groups of one)."""
    strategy = cfg.sharding_strategy
    if strategy in ("FULL_SHARD", "SHARD_GRAD_OP"):
        return (world_size,)
    if strategy == "NO_SHARD":
        return (world_size, 1)
    replicas = cfg.hybrid_sharding_num_model_replicas
    if replicas is None:
        # Upstream's default: one replica per node, sharded within the node.
        local = torch.cuda.device_count() if torch.cuda.is_available() else world_size
        replicas = max(1, world_size // max(1, local))
    if world_size % replicas:
        raise ConfigError(
            f"fsdp.hybrid_sharding_num_model_replicas={replicas} does not divide the world size {world_size}",
            hint="use a divisor of the number of processes",
        )
    return (replicas, world_size // replicas)


def apply_fsdp(model: nn.Module, cfg: TrainConfig, world: World) -> None:
    """`fully_shard` on every block, then on the root (embedding, final norm, output layer)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    shape = mesh_shape(cfg.fsdp, world.world_size)
    names = ("replicate", "shard") if len(shape) == 2 else ("shard",)
    mesh = init_device_mesh(world.device.type, shape, mesh_dim_names=names)
    kwargs: dict[str, Any] = {"mesh": mesh}
    policy = mixed_precision_policy(cfg)
    if policy is not None:
        kwargs["mp_policy"] = policy
    zero2 = cfg.fsdp.sharding_strategy in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2")
    blocks = _blocks(model)
    for index, block in enumerate(blocks):
        # The last block's backward starts right after the forward: resharding it would only regather it.
        reshard = not zero2 and index < len(blocks) - 1
        fully_shard(block, reshard_after_forward=reshard, **kwargs)
    fully_shard(model, reshard_after_forward=not zero2, **kwargs)
    # FSDP2 warns that the root's output (the logits, a view from the output projection) must not be
    # modified in place; the loss never does, and the warning would otherwise repeat every step.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def _named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {clean_param_name(name): param for name, param in model.named_parameters()}


@torch.no_grad()
def _set_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copies the whole tensor `full` into `param`, or into this rank's shard of it (no communication)."""
    if is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        full = full.to(device=param.device, dtype=param.dtype)
        shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        param.to_local().copy_(shard.to_local())
    else:
        param.copy_(full)


@torch.no_grad()
def _initialize(model: nn.Module, order: list[str], cfg: TrainConfig, device: torch.device, seed: int | None):
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    from olmo_cli.model.lora import adapter_init_rule

    params = _named_params(model)
    for name in order:
        param = params[name]
        # LoRA adapters (when the model has them) have their own rule; everything else is the model's.
        rule = adapter_init_rule(name, param.shape) or init_rule(name, cfg.model)
        if not is_dtensor(param):
            init_tensor(param, rule, generator)
            continue
        # Draw the whole tensor (one at a time, so peak memory is one parameter) and keep our shard.
        full = torch.empty(param.shape, dtype=param.dtype, device=device)
        init_tensor(full, rule, generator)
        _set_full(param, full)


def parallelize_model(model: OLMo, cfg: TrainConfig, world: World, *, seed: int | None) -> OLMo:
    """Applies AC, compile and (for more than one process) FSDP to a model built on meta, then
    materializes it on `world.device` and initializes it; returns the same model object.

    With `seed` the full parameters equal `build_model(cfg.model, world.device.type, seed=seed)`'s. With
    None a seed is drawn from rank 0's global torch RNG and shared, so the shards of all ranks belong to
    one draw (one process uses the global RNG directly, like `build_model`).
    """
    # The plain model's parameter order is the order build_model initializes in; wrappers keep the
    # parameters but rename them, so the order is taken before they are applied.
    order = list(_named_params(model))
    if any(not p.is_meta for p in model.parameters()):
        # to_empty below would discard the values of a materialized model without a word.
        raise ValueError(
            "parallelize_model expects a model built on the meta device (build_model(cfg, 'meta'))"
        )
    apply_activation_checkpointing(model, cfg.activation_checkpointing)
    apply_compile(model, cfg.compile)
    if world.is_distributed:
        apply_fsdp(model, cfg, world)
        if seed is None:
            seed = broadcast_object(int(torch.randint(0, 2**62, ()).item()), world)
    model.to_empty(device=world.device)
    _initialize(model, order, cfg, world.device, seed)
    return model


def microbatch_sync(model: nn.Module, is_last: bool) -> None:
    """Before each micro-batch's backward: reduce gradients across ranks only on the last one (FSDP2
    accumulates unsharded gradients locally until then); a no-op for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(is_last)


def _is_sharded(model: nn.Module) -> bool:
    return any(is_dtensor(p) for p in model.parameters())


def full_model_state(model: nn.Module, *, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The whole model as {upstream name: fp32 CPU tensor}, for an unsharded checkpoint.

    Collective for a sharded model: every rank calls it. Then only rank 0 receives the tensors and other
    ranks get {} (so a node does not hold one full copy per process) unless `all_ranks`. The tensors are
    always copies, never the live parameters, so a later optimizer step does not change them.
    """
    if not _is_sharded(model):
        plain = model.state_dict()
        return {clean_param_name(k): v.detach().to("cpu", torch.float32, copy=True) for k, v in plain.items()}
    state: dict[str, torch.Tensor] = {}
    rank0 = torch.distributed.get_rank() == 0
    for name, param in _named_params(model).items():
        full = param.full_tensor()  # type: ignore[attr-defined]
        if rank0 or all_ranks:
            state[name] = full.to("cpu", torch.float32)
        del full
    return state


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads {upstream name: full tensor} into a plain or FSDP2 model; each rank must hold the full
    `state` and cuts its own shard. Keys and shapes must match exactly."""
    params = _named_params(model)
    given = {clean_param_name(k): v for k, v in state.items()}
    details = [f"missing: {n}" for n in sorted(params.keys() - given.keys())[:5]]
    details += [f"unexpected: {n}" for n in sorted(given.keys() - params.keys())[:5]]
    for name in sorted(params.keys() & given.keys()):
        if tuple(given[name].shape) != tuple(params[name].shape):
            shapes = f"{tuple(given[name].shape)} given, {tuple(params[name].shape)} in the model"
            details.append(f"{name}: {shapes}")
    if details:
        raise CheckpointError(
            "the model state does not fit this model", details=details, hint="check the model config"
        )
    for name, param in params.items():
        _set_full(param, given[name])
