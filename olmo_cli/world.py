"""The process group, from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...),
and the device a process computes on.

One process without torchrun is a world of size 1 and creates no process group, so every helper here is
a cheap no-op there and the single-process trainer needs no `if distributed` branches of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from olmo_cli.errors import UsageError

__all__ = [
    "World",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "close_world",
    "DTYPE_NAMES",
    "canonical_dtype",
    "compute_dtype",
    "init_world",
    "pick_device",
]

_TORCHRUN_HINT = (
    "launch with `torchrun --nproc-per-node N -m olmo_cli train ...` or `olmo train --nproc-per-node N`"
)


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among `world_size` processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # Whether init_world created the process group (and close_world should destroy it).
    owns_group: bool = field(default=False, compare=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise UsageError(f"environment variable {name} is not set but WORLD_SIZE is", hint=_TORCHRUN_HINT)
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(
            f"environment variable {name}={raw!r} is not an integer", hint=_TORCHRUN_HINT
        ) from None


def _read_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), checked for consistency."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise UsageError(f"WORLD_SIZE={world_size} must be at least 1", hint=_TORCHRUN_HINT)
    multi = world_size > 1
    rank = _env_int("RANK", None if multi else 0)
    local_rank = _env_int("LOCAL_RANK", None if multi else 0)
    if not 0 <= rank < world_size:
        raise UsageError(
            f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size})", hint=_TORCHRUN_HINT
        )
    if not 0 <= local_rank <= rank:
        raise UsageError(f"LOCAL_RANK={local_rank} is inconsistent with RANK={rank}", hint=_TORCHRUN_HINT)
    if multi:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise UsageError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set", hint=_TORCHRUN_HINT)
    return rank, world_size, local_rank


def pick_device(name: str | None) -> torch.device:
    """The device one process asked for by name (a --device option), checked; None: cuda when there is
    one, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name}: {e}", hint="cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here", hint="use --device cpu")
    return device


# One vocabulary for every --dtype (and the Python API's dtype=): each short name and its torch name.
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def canonical_dtype(name: str) -> str:
    """ "float32", "bfloat16" or "float16" for a short or long name (any case), "auto" for auto; else a
    UsageError listing the names."""
    key = str(name).strip().lower()
    if key == "auto" or key in DTYPE_NAMES.values():
        return key
    if key in DTYPE_NAMES:
        return DTYPE_NAMES[key]
    names = ", ".join(["auto", *(f"{short}/{long}" for short, long in DTYPE_NAMES.items())])
    raise UsageError(f"unknown dtype {name!r}", hint=f"one of {names}")


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """Weights and compute dtype: "auto" is bf16 on GPU and fp32 on CPU (bf16 matmuls are slow on many
    CPUs); else the dtype `choice` names (fp32/float32, bf16/bfloat16, fp16/float16)."""
    name = canonical_dtype(choice)
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _resolve_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                "device 'cuda' was asked for but no CUDA GPU is available", hint="use --device cpu"
            )
        # Each process of a node drives the GPU of its local rank unless told otherwise.
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        if dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} visible",
                hint="use --nproc-per-node at most the number of GPUs per node",
            )
        torch.cuda.set_device(dev)
    return dev


def init_world(device: str | torch.device | None = None) -> World:
    """Reads torchrun's environment and, for more than one process, joins the process group.

    device None picks cuda:{LOCAL_RANK} when CUDA is available, else cpu. The backend follows the device:
    gloo on cpu, nccl on cuda. Calling it again (or after someone else initialized the group) reuses the
    existing group.
    """
    rank, world_size, local_rank = _read_env()
    dev = _resolve_device(device, local_rank)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        owns = True
    elif dist.is_initialized() and dist.get_world_size() != world_size:
        raise UsageError(
            f"a process group of size {dist.get_world_size()} exists but WORLD_SIZE={world_size}",
            hint=_TORCHRUN_HINT,
        )
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def close_world(world: World, *, synchronize: bool = False) -> None:
    """Destroys the process group if `init_world` created it; safe to call more than once.

    `synchronize` (after a normal finish, when every rank gets here): a barrier first, so no rank tears
    down its gloo connections, or rank 0 the rendezvous store, while another is still using them —
    that race aborts the slower process ("terminate called without an active exception"). Not after
    an error, when the other ranks may never arrive.
    """
    if world.owns_group and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """Sums `t` over all ranks in place and returns it; returns `t` untouched on one process."""
    if world.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """Returns rank `src`'s `obj` on every rank (pickled; for small things like paths and step numbers)."""
    if not world.is_distributed:
        return obj
    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
