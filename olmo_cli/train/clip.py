"""Global-norm gradient clipping as upstream OLMo does it (docs/format.md §6.5), for plain and FSDP2
(DTensor) gradients alike.

The norm is accumulated in fp32 from per-tensor norms. A DTensor gradient contributes the squared norm of
its local shard, summed over the ranks that hold the other shards by one all-reduce per mesh, so no rank
ever materializes a full gradient (`full_tensor()` would all-gather every parameter). Plain tensors are
taken to be whole on every rank (one process, or replicated) and are not reduced.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["clip_grad_norm", "is_dtensor", "scale_grads", "total_grad_norm"]

# Added to the norm before dividing, as upstream and torch do, so a zero gradient scales by 1, not inf.
_EPS = 1e-6


def is_dtensor(tensor: torch.Tensor) -> bool:
    """True for an FSDP2-sharded tensor; torch builds without distributed support have no DTensor."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _local(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_local() if is_dtensor(grad) else grad


def _sq_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = [torch.linalg.vector_norm(t, 2, dtype=torch.float32) for t in tensors]
    return torch.stack(norms).pow(2).sum()


def _shard_dims(grad: torch.Tensor) -> tuple[int, ...]:
    """Mesh dims over which this DTensor's shards are spread (Replicate dims hold copies: not summed)."""
    dims = []
    for dim, placement in enumerate(grad.placements):
        if placement.is_partial():
            # Partial means each rank holds an addend of the gradient: the norm of a sum is not a sum of
            # norms. FSDP2 reduce-scatters gradients before the optimizer sees them, so this is misuse.
            raise ValueError(
                "cannot take the norm of a DTensor gradient with a Partial (unreduced) placement"
            )
        if placement.is_shard():
            dims.append(dim)
    return tuple(dims)


def total_grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm (fp32, 0-dim) of all gradients of `params`; 0 when none has a gradient.

    Collective when any gradient is a sharded DTensor: every rank must call it with the same parameters.
    """
    grads = _grads(params)
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    device = _local(grads[0]).device
    total = torch.zeros((), dtype=torch.float32, device=device)
    plain = [g for g in grads if not is_dtensor(g)]
    if plain:
        total = total + _sq_norm(plain).to(device)
    by_mesh: dict[tuple[object, tuple[int, ...]], list[torch.Tensor]] = {}
    for grad in grads:
        if is_dtensor(grad):
            by_mesh.setdefault((grad.device_mesh, _shard_dims(grad)), []).append(grad.to_local())
    for (mesh, dims), locals_ in by_mesh.items():
        part = _sq_norm(locals_).to(device)
        for dim in dims:
            torch.distributed.all_reduce(part, group=mesh.get_group(dim))  # type: ignore[attr-defined]
        total = total + part
    return total.sqrt()


def scale_grads(params: Iterable[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """Multiplies every gradient by `min(1, max_norm / (total_norm + 1e-6))`.

    Always multiplied, even by 1, so there is no host sync on the comparison (as upstream).
    """
    coef = torch.clamp(max_norm / (total_norm + _EPS), max=1.0)
    for grad in _grads(params):
        local = _local(grad)
        local.mul_(coef.to(local.device, local.dtype))


def clip_grad_norm(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Clips the gradients of `params` to global norm `max_norm` (None: measure only); returns the norm
    before clipping."""
    params = list(params)
    norm = total_grad_norm(params)
    if max_norm is not None:
        scale_grads(params, max_norm, norm)
    return norm
