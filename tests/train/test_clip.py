"""Global-norm gradient clipping (docs/format.md §6.5): against torch's clip_grad_norm_ in one process, the
one-step threshold lag through the real optimizer, and DTensor gradients sharded over two gloo ranks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from olmo_cli.train.clip import clip_grad_norm, total_grad_norm
from olmo_cli.train.duration import scheduler_max
from olmo_cli.train.optim import build_optimizer, clip_and_step
from olmo_cli.train.schedule import grad_clip_threshold_at, lr_at
from olmo_cli.world import World
from tests._fixtures import preset
from tests.train import _dist_worker as worker

SHAPES = [(5, 3), (1, 4), (8,), (3, 2, 2), (7, 1)]


def _params(seed: int = 0, scale: float = 1.0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        p = nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=gen) * scale
        params.append(p)
    return params


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_matches_torch_clip_grad_norm(max_norm):
    ours, theirs = _params(), _params()
    norm = clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm.dtype == torch.float32 and norm.dim() == 0
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)
    if max_norm == 1e6:  # not clipped: multiplied by exactly 1, so bit-identical to the input
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(_params(), ours, strict=True))
    else:
        assert total_grad_norm(ours).item() == pytest.approx(max_norm, rel=1e-5)


def test_low_precision_grads_accumulate_in_fp32():
    params = []
    for p in _params(scale=300.0):  # bf16 squares would lose all but 8 bits: accumulate in fp32
        q = nn.Parameter(p.detach().bfloat16())
        q.grad = p.grad.bfloat16()
        params.append(q)
    exact = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    norm = total_grad_norm(params)
    assert norm.dtype == torch.float32
    assert norm.item() == pytest.approx(exact.item(), rel=1e-6)
    clip_grad_norm(params, 1.0)
    assert all(p.grad.dtype == torch.bfloat16 for p in params)


def test_measure_only_and_no_grads():
    params = _params()
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm(params, None)
    assert norm.item() > 0 and all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    assert clip_grad_norm([nn.Parameter(torch.ones(2))], 1.0).item() == 0.0


def test_clip_threshold_lags_the_schedule_by_one_step():
    """7B: step 1 clips at the raw 1.0, steps 2..1001 at the warmed-up 10.0, then 1.0 again (§6.5)."""
    cfg = preset("7b")
    layer = nn.Linear(4, 4, bias=False)
    optim = build_optimizer(layer, cfg)
    total = scheduler_max(cfg)
    grad = torch.full((4, 4), 25.0)  # norm 100: always above the threshold, so the threshold shows
    used = {}
    for step in range(1, 1004):
        layer.weight.grad = grad.clone()
        lr = lr_at(step, cfg.scheduler, cfg.optimizer.learning_rate, total)
        threshold = grad_clip_threshold_at(step, cfg.scheduler, cfg.max_grad_norm)
        norm = clip_and_step(optim, lr=lr, max_grad_norm=threshold)
        assert norm.item() == pytest.approx(100.0)
        used[step] = round(layer.weight.grad.norm().item(), 4)
        assert optim.param_groups[0]["lr"] == lr  # the LR is this step's, no lag
    assert used[1] == 1.0
    assert {used[s] for s in range(2, 1002)} == {10.0}
    assert used[1002] == used[1003] == 1.0


def test_group_without_threshold_is_not_clipped():
    cfg = preset("1b").model_copy(update={"max_grad_norm": None})
    layer = nn.Linear(4, 4, bias=False)
    optim = build_optimizer(layer, cfg)
    layer.weight.grad = torch.full((4, 4), 25.0)
    norm = clip_and_step(optim, lr=1e-3, max_grad_norm=None)
    assert norm.item() == pytest.approx(100.0)
    assert torch.equal(layer.weight.grad, torch.full((4, 4), 25.0))


def _dtensor_job(world: World) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world.world_size,))
    sharded, replicated, plain = _params(seed=1), _params(seed=2)[:2], _params(seed=3)[:1]
    reference = [nn.Parameter(torch.zeros_like(p)) for p in (*sharded, *replicated, *plain)]
    for ref, p in zip(reference, (*sharded, *replicated, *plain), strict=True):
        ref.grad = p.grad.clone()
    ours = []
    # Uneven shards on purpose: (1, 4) leaves rank 1 an empty shard, (5, 3) splits 3 + 2.
    for group, placement in ((sharded, Shard(0)), (replicated, Replicate())):
        for p in group:
            q = nn.Parameter(distribute_tensor(p.detach(), mesh, [placement]))
            q.grad = distribute_tensor(p.grad, mesh, [placement])
            ours.append(q)
    ours += plain  # a plain tensor is taken to be the same whole tensor on every rank
    expected = torch.nn.utils.clip_grad_norm_(reference, 0.5)
    norm = clip_grad_norm(ours, 0.5)
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for q, ref in zip(ours, reference, strict=True):
        full = q.grad.full_tensor() if hasattr(q.grad, "full_tensor") else q.grad
        torch.testing.assert_close(full, ref.grad, rtol=1e-6, atol=1e-8)
    partial = nn.Parameter(distribute_tensor(torch.zeros(2), mesh, [Replicate()]))
    partial.grad = DTensor.from_local(torch.ones(2), mesh, [Partial()])
    with pytest.raises(ValueError, match="Partial"):
        total_grad_norm([partial])


@pytest.mark.slow
def test_dtensor_grads_sharded_over_two_ranks():
    worker.spawn(_dtensor_job, 2)
