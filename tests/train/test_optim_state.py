"""AdamW state in upstream's unsharded form and back (docs/format.md §4.3, §4.7): a round trip through a
file continues bit-identically, and the other forms upstream wrote load by name."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError
from olmo_cli.model.loss import cross_entropy_loss
from olmo_cli.model.olmo import OLMo, build_model
from olmo_cli.train.optim import build_optimizer, clip_and_step
from olmo_cli.train.optim_state import load_upstream_optimizer_state, upstream_optimizer_state
from olmo_cli.world import World
from tests._fixtures import small
from tests.train import _dist_worker as worker


def _batch(step: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(step))


def _train(model: OLMo, optim: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        optim.zero_grad(set_to_none=True)
        input_ids = _batch(step, model.config.vocab_size)
        cross_entropy_loss(model(input_ids), input_ids).loss.backward()
        clip_and_step(optim, lr=1e-2 / step, max_grad_norm=1.0)


def _through_a_file(obj: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain data only, as an untrusted file must be


def _fresh_copy(model: OLMo, cfg: TrainConfig) -> tuple[OLMo, torch.optim.Optimizer]:
    twin = build_model(model.config, "cpu", seed=99)
    twin.load_state_dict(model.state_dict())
    return twin, build_optimizer(twin, cfg)


@pytest.fixture
def trained():
    cfg = small("1b")
    model = build_model(cfg.model, "cpu", seed=0)
    optim = build_optimizer(model, cfg)
    _train(model, optim, range(1, 3))
    return cfg, model, optim


def _assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(p, q), name


def test_upstream_form(trained):
    cfg, model, optim = trained
    sd = upstream_optimizer_state(optim)
    names = sorted(n for n, _ in model.named_parameters())
    assert sorted(sd["state"]) == names
    wte = sd["state"]["transformer.wte.weight"]
    assert set(wte) == {"step", "exp_avg", "exp_avg_sq"}
    assert wte["step"].dtype == torch.float32 and wte["step"].dim() == 0 and wte["step"].item() == 2.0
    assert wte["exp_avg"].shape == model.transformer["wte"].weight.shape
    decay, no_decay = sd["param_groups"]
    assert no_decay["params"] == no_decay["param_names"] == ["transformer.wte.weight"]
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    for group in sd["param_groups"]:
        assert {"sharded", "max_grad_norm", "max_grad_norm_ratio", "lr", "betas", "eps"} <= set(group)
        assert group["sharded"] is False and group["eps"] == 1e-5

    # param_groups are pickled into optim.safetensors (§4.5); readers admit only plain data.
    def plain(value: object) -> bool:
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(sd["param_groups"])


def test_round_trip_continues_bit_identically(trained):
    cfg, model, optim = trained
    loaded = _through_a_file(upstream_optimizer_state(optim))
    twin, twin_optim = _fresh_copy(model, cfg)
    load_upstream_optimizer_state(twin_optim, loaded, lr=1e-2 / 3, cfg=cfg.optimizer)
    _train(model, optim, range(3, 5))
    _train(twin, twin_optim, range(3, 5))
    _assert_same_parameters(model, twin)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(optim.state[p]["exp_avg_sq"], twin_optim.state[q]["exp_avg_sq"])


def test_torch_integer_ids_and_fsdp1_prefixes_load(trained):
    cfg, model, optim = trained
    expected = _through_a_file(upstream_optimizer_state(optim))
    by_id = _through_a_file(optim.state_dict())  # torch's own form: integer keys, names in param_names
    assert all(isinstance(k, int) for k in by_id["state"])
    prefixed = copy.deepcopy(expected)  # FSDP1 names, as in upstream's own files
    rename = {
        n: "_fsdp_wrapped_module." + n.replace("blocks.", "blocks._fsdp_wrapped_module.")
        for n in expected["state"]
    }
    prefixed["state"] = {rename[n]: v for n, v in prefixed["state"].items()}
    for group in prefixed["param_groups"]:
        group["params"] = group["param_names"] = [rename[n] for n in group["params"]]
    assert "_fsdp_wrapped_module.transformer.blocks._fsdp_wrapped_module.0.ff_out.weight" in prefixed["state"]
    # upstream's `distributed_strategy: single` (and DDP) name them `module.transformer...`
    wrapped = copy.deepcopy(expected)
    wrapped["state"] = {"module." + n: v for n, v in wrapped["state"].items()}
    for group in wrapped["param_groups"]:
        group["params"] = group["param_names"] = ["module." + n for n in group["params"]]
    for form in (by_id, prefixed, wrapped):
        _, twin_optim = _fresh_copy(model, cfg)
        load_upstream_optimizer_state(twin_optim, form, lr=1.0, cfg=cfg.optimizer)
        for group in twin_optim.param_groups:
            for name, param in zip(group["param_names"], group["params"], strict=True):
                for key, value in expected["state"][name].items():
                    assert torch.equal(twin_optim.state[param][key], value), (name, key)


def test_config_overrides_lr_initial_lr_and_weight_decay(trained):
    cfg, model, optim = trained
    sd = upstream_optimizer_state(optim)
    for group in sd["param_groups"]:
        group.update(lr=123.0, eps=1e-8, max_grad_norm=5.0, foreach=True)
        if group["weight_decay"] > 0:
            group["weight_decay"] = 0.5
    _, twin_optim = _fresh_copy(model, cfg)
    load_upstream_optimizer_state(twin_optim, sd, lr=3e-4, cfg=cfg.optimizer)
    decay, no_decay = twin_optim.param_groups
    assert decay["lr"] == no_decay["lr"] == 3e-4
    assert decay["initial_lr"] == no_decay["initial_lr"] == cfg.optimizer.learning_rate
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    # The remaining hyper-parameters are the file's (torch semantics, as upstream); the OLMo fields and
    # execution switches are the live optimizer's.
    assert decay["eps"] == 1e-8
    assert decay["max_grad_norm"] == cfg.max_grad_norm == 1.0 and decay["foreach"] is None


def test_single_group_file_fills_decay_and_no_decay_groups():
    everything = small("7b-0424")  # decays everything: one group
    model = build_model(everything.model, "cpu", seed=0)
    optim = build_optimizer(model, everything)
    assert len(optim.param_groups) == 1
    _train(model, optim, range(1, 3))
    sd = _through_a_file(upstream_optimizer_state(optim))

    split = small("7b-0424")
    split.optimizer.decay_embeddings = False
    twin = build_model(split.model, "cpu", seed=0)
    twin_optim = build_optimizer(twin, split)
    assert len(twin_optim.param_groups) == 2
    load_upstream_optimizer_state(twin_optim, sd, lr=1e-3, cfg=split.optimizer)
    decay, no_decay = twin_optim.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert no_decay["param_names"] == ["transformer.wte.weight"]
    wte = twin.transformer["wte"].weight
    assert torch.equal(
        twin_optim.state[wte]["exp_avg"], optim.state[model.transformer["wte"].weight]["exp_avg"]
    )


def test_mismatches_are_checkpoint_errors(trained):
    cfg, model, optim = trained
    sd = upstream_optimizer_state(optim)
    _, twin_optim = _fresh_copy(model, cfg)

    bad_shape = copy.deepcopy(sd)
    bad_shape["state"]["transformer.wte.weight"]["exp_avg"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="does not match") as e:
        load_upstream_optimizer_state(twin_optim, bad_shape, lr=1.0, cfg=cfg.optimizer)
    assert any("transformer.wte.weight.exp_avg: (3, 3) in the file" in d for d in e.value.details)

    renamed = copy.deepcopy(sd)
    renamed["state"]["transformer.emb.weight"] = renamed["state"].pop("transformer.wte.weight")
    with pytest.raises(CheckpointError) as e:
        load_upstream_optimizer_state(twin_optim, renamed, lr=1.0, cfg=cfg.optimizer)
    assert e.value.details == [
        "missing state for transformer.wte.weight",
        "state for unknown parameter transformer.emb.weight",
    ]

    three = copy.deepcopy(sd)
    three["param_groups"].append(copy.deepcopy(three["param_groups"][0]))
    with pytest.raises(CheckpointError, match="3 parameter groups but this run's optimizer has 2"):
        load_upstream_optimizer_state(twin_optim, three, lr=1.0, cfg=cfg.optimizer)


def test_state_of_a_never_stepped_optimizer_loads(trained):
    cfg, model, _ = trained
    fresh = build_optimizer(model, cfg)
    sd = upstream_optimizer_state(fresh)
    assert sd["state"] == {}
    _, twin_optim = _fresh_copy(model, cfg)
    load_upstream_optimizer_state(twin_optim, sd, lr=0.5, cfg=cfg.optimizer)
    assert len(twin_optim.state) == 0 and twin_optim.param_groups[0]["lr"] == 0.5


def _dtensor_job(world: World) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world.world_size,))
    cfg = TrainConfig.model_validate(
        {"optimizer": {"name": "adamw", "learning_rate": 0.1}, "max_grad_norm": 1.0}
    )
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 1))

    def sharded_copy() -> nn.Module:
        twin = copy.deepcopy(reference)
        for module in twin:
            for name, p in list(module.named_parameters()):
                setattr(module, name, nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
        return twin

    def step(model: nn.Module, optim: torch.optim.Optimizer, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            grad = torch.randn(p.shape, generator=gen)
            p.grad = distribute_tensor(grad, mesh, list(p.placements)) if hasattr(p, "placements") else grad
        clip_and_step(optim, lr=0.1, max_grad_norm=1.0)

    sharded = sharded_copy()
    optims = [build_optimizer(m, cfg) for m in (reference, sharded)]
    assert optims[1].param_groups[0]["sharded"] is True
    for seed in (1, 2):
        step(reference, optims[0], seed)
        step(sharded, optims[1], seed)
    exported = upstream_optimizer_state(optims[1])  # collective: full tensors on every rank
    expected = upstream_optimizer_state(optims[0])
    # Same math, but the sharded global norm is summed in another order: equal to rounding.
    for name, entry in expected["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(exported["state"][name][key], value, rtol=1e-5, atol=1e-9)

    resumed = sharded_copy()
    for p, q in zip(resumed.parameters(), sharded.parameters(), strict=True):
        p.data.copy_(q.data)
    resumed_optim = build_optimizer(resumed, cfg)
    load_upstream_optimizer_state(resumed_optim, exported, lr=0.1, cfg=cfg.optimizer)
    for model, optim in ((resumed, resumed_optim), (sharded, optims[1])):
        step(model, optim, 3)
    for p, q in zip(sharded.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p.to_local(), q.to_local())  # bit-identical to the run that never stopped


@pytest.mark.slow
def test_dtensor_state_round_trip_over_two_ranks():
    worker.spawn(_dtensor_job, 2)
