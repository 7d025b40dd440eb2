"""Multi-process helpers for the distributed tests: spawn N CPU processes joined by gloo, and the small
jobs they run. Results travel back through files (torch.save) in a directory the test owns.

The training job is deliberately its own minimal loop (model + loss + AdamW + clipping, the pieces the
trainer uses), so these tests check the parallelism layer without depending on the trainer."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn
from torch.distributed import TCPStore
from torch.optim import Optimizer

from olmo_cli.config.schema import TrainConfig
from olmo_cli.model.loss import cross_entropy_loss
from olmo_cli.model.olmo import build_model
from olmo_cli.train.optim import build_optimizer, clip_and_step
from olmo_cli.train.parallelize import microbatch_sync, parallelize_model
from olmo_cli.world import World, all_reduce_sum, broadcast_object, close_world, init_world
from tests._fixtures import small

SEED = 1234
GLOBAL_BATCH = 4
LR = 1e-2


def _entry(rank: int, world_size: int, port: int, job: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        # The parent hosts the rendezvous store, as torchrun's agent does: when rank 0 hosted it, rank 0
        # finishing first took it away while another rank was still tearing down its gloo connections,
        # and that rank aborted ("terminate called without an active exception").
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    world = init_world("cpu")
    try:
        job(world, *args)
    except BaseException:
        close_world(world)
        raise
    close_world(world, synchronize=True)


def spawn(job: Callable[..., None], world_size: int, *args: Any) -> None:
    """Runs `job(world, *args)` in `world_size` fresh processes; raises if any of them fails."""
    store = TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)
    try:
        mp.spawn(_entry, args=(world_size, store.port, job, args), nprocs=world_size, join=True)
    finally:
        del store


def tiny_config(**model_updates: Any) -> TrainConfig:
    """A few-thousand-parameter model with biases and affine norms (so both optimizer groups exist and
    some tensors are smaller than the world size along dim 0), fp32, clipping on."""
    updates = {"include_bias": True, "layer_norm_with_affine": True, "weight_tying": False, **model_updates}
    cfg = small("tiny", **updates)
    return cfg.model_copy(update={"precision": "fp32", "max_grad_norm": 0.5})


def batch(step: int, cfg: TrainConfig) -> torch.Tensor:
    """The global batch of `step`, the same whatever the world size."""
    gen = torch.Generator().manual_seed(100 + step)
    seq = cfg.model.max_sequence_length
    return torch.randint(0, cfg.model.vocab_size, (GLOBAL_BATCH, seq), generator=gen)


def train_step(model: nn.Module, optim: Optimizer, ids: torch.Tensor, world: World) -> float:
    """One optimizer step on this rank's strided slice of the global batch, one instance per
    micro-batch (gradient accumulation); returns the global mean loss."""
    local = ids[world.rank :: world.world_size]
    total = torch.zeros(())
    for i in range(local.shape[0]):
        micro = local[i : i + 1]
        microbatch_sync(model, is_last=i == local.shape[0] - 1)
        parts = cross_entropy_loss(model(micro), micro, normalize_by=local.numel())
        parts.loss.backward()
        total += parts.ce_loss.detach()
    clip_and_step(optim, lr=LR, max_grad_norm=0.5)
    optim.zero_grad(set_to_none=True)
    return float(all_reduce_sum(total, world)) / world.world_size


def build(cfg: TrainConfig, world: World) -> tuple[nn.Module, Optimizer]:
    model = parallelize_model(build_model(cfg.model, "meta"), cfg, world, seed=SEED)
    return model, build_optimizer(model, cfg)


# ---------------------------------------------------------------------------------------------------
# jobs (module-level so that spawned processes can import them)


def job_full_params(world: World, out: Path, ac_mode: str | None) -> None:
    from olmo_cli.train.parallelize import full_model_state

    cfg = tiny_config().model_copy(update={"activation_checkpointing": ac_mode})
    model, _ = build(cfg, world)
    state = full_model_state(model)
    # The small collectives, on the same occasion: rank r contributes r+1; rank 0's object wins.
    total = all_reduce_sum(torch.tensor([world.rank + 1.0]), world).item()
    received = broadcast_object({"from": world.rank}, world)
    if world.is_main:
        torch.save({"params": state, "sum": total, "received": received}, out / "params.pt")


def job_train(world: World, out: Path, steps: int) -> None:
    from olmo_cli.train.optim_state import upstream_optimizer_state
    from olmo_cli.train.parallelize import full_model_state

    cfg = tiny_config()
    model, optim = build(cfg, world)
    losses = [train_step(model, optim, batch(step, cfg), world) for step in range(steps)]
    params = full_model_state(model)
    optim_state = copy.deepcopy(upstream_optimizer_state(optim))  # the moments are live tensors
    if world.is_main:
        torch.save({"losses": losses, "params": params, "optim": optim_state}, out / "train.pt")


def job_save_sharded(world: World, out: Path, steps: int) -> None:
    """Trains `steps` steps, writes a sharded checkpoint, then records the full state and the loss of
    one more step (what a resumed run must reproduce)."""
    from olmo_cli.checkpoint.sharded import write_sharded
    from olmo_cli.train.optim_state import upstream_optimizer_state
    from olmo_cli.train.parallelize import full_model_state

    cfg = tiny_config()
    model, optim = build(cfg, world)
    for step in range(steps):
        train_step(model, optim, batch(step, cfg), world)
    trainer = {
        "global_step": steps,
        "global_train_examples_seen_this_epoch": steps * GLOBAL_BATCH,
        "global_train_tokens_seen": steps * GLOBAL_BATCH * cfg.model.max_sequence_length,
        "world_size": world.world_size,
        "rank": world.rank,
        "rng": {"torch": torch.get_rng_state()},
    }
    write_sharded(
        out / f"step{steps}", model=model, optim=optim, trainer_state=trainer, config_yaml="{}\n", world=world
    )
    params = full_model_state(model)
    optim_state = copy.deepcopy(upstream_optimizer_state(optim))  # the moments are live tensors
    next_loss = train_step(model, optim, batch(steps, cfg), world)
    if world.is_main:
        torch.save({"params": params, "optim": optim_state, "next_loss": next_loss}, out / "reference.pt")


def job_load_sharded(world: World, out: Path, steps: int) -> None:
    """Loads the checkpoint `out/step{steps}` in this world and records what it holds."""
    from olmo_cli.checkpoint.sharded import read_sharded
    from olmo_cli.train.optim_state import upstream_optimizer_state
    from olmo_cli.train.parallelize import full_model_state

    cfg = tiny_config()
    model, optim = build(cfg, world)
    trainer = read_sharded(out / f"step{steps}", model=model, optim=optim, world=world)
    params = full_model_state(model)
    optim_state = copy.deepcopy(upstream_optimizer_state(optim))  # the moments are live tensors
    next_loss = train_step(model, optim, batch(steps, cfg), world)
    if world.is_main:
        record = {"params": params, "optim": optim_state, "next_loss": next_loss, "trainer": trainer}
        torch.save(record, out / f"loaded-{world.world_size}.pt")
