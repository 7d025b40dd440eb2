"""The parallelism layer on one process: activation checkpointing changes no number, compile keeps names,
the policies and meshes follow the config, and a model built on meta and parallelized is initialized
exactly as build_model initializes it. (Multi-process behaviour: test_distributed.py.)"""

from __future__ import annotations

import copy

import pytest
import torch

from olmo_cli.config.activation_checkpointing import checkpointed_blocks
from olmo_cli.config.schema import CompilerConfig, FSDPConfig
from olmo_cli.errors import CheckpointError, ConfigError
from olmo_cli.model.loss import cross_entropy_loss
from olmo_cli.model.olmo import build_model
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.parallelize import (
    apply_activation_checkpointing,
    apply_compile,
    full_model_state,
    load_full_model_state,
    mesh_shape,
    microbatch_sync,
    mixed_precision_policy,
    parallelize_model,
)
from olmo_cli.world import init_world
from tests.train._dist_worker import tiny_config

MODES = [
    "whole_layer",
    "one_in_two",
    "one_in_three",
    "one_in_four",
    "one_in_eight",
    "two_in_three",
    "three_in_four",
    "fine_grained",
]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (None, []),
        ("whole_layer", [0, 1, 2, 3, 4, 5, 6, 7]),
        ("one_in_two", [0, 2, 4, 6]),
        ("one_in_three", [0, 3, 6]),
        ("one_in_four", [0, 4]),
        ("one_in_eight", [0]),
        ("two_in_three", [1, 2, 4, 5, 7]),
        ("three_in_four", [1, 2, 3, 5, 6, 7]),
        ("fine_grained", []),
    ],
)
def test_checkpointed_blocks_follow_upstream_rules(mode, expected):
    assert checkpointed_blocks(mode, 8) == expected


def test_unknown_checkpointing_mode_is_a_config_error():
    with pytest.raises(ConfigError):
        checkpointed_blocks("one_in_five", 8)


def _loss_and_grads(
    model: torch.nn.Module, ids: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(7)  # dropout masks: the same stream for both models
    loss = cross_entropy_loss(model(ids), ids).loss
    loss.backward()
    return loss.detach(), {clean_param_name(n): p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", MODES)
def test_activation_checkpointing_changes_no_number(mode):
    # Dropout on: the recomputation must replay the same masks (RNG state preserved).
    cfg = tiny_config(n_layers=4, residual_dropout=0.1, attention_dropout=0.1)
    plain = build_model(cfg.model, "cpu", seed=0)
    wrapped = copy.deepcopy(plain)
    apply_activation_checkpointing(wrapped, mode)
    ids = torch.randint(
        0,
        cfg.model.vocab_size,
        (2, cfg.model.max_sequence_length),
        generator=torch.Generator().manual_seed(1),
    )
    loss_ref, grads_ref = _loss_and_grads(plain, ids)
    loss, grads = _loss_and_grads(wrapped, ids)
    assert torch.equal(loss, loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)
    # The wrapper is really there (numerics alone cannot tell), and state-dict keys stay upstream's.
    wrapped_names = [n for n, _ in wrapped.named_parameters()]
    assert any("_checkpoint_wrapped_module" in n for n in wrapped_names)
    assert list(wrapped.state_dict()) == list(plain.state_dict())


def test_fine_grained_checkpoints_the_attention_method():
    cfg = tiny_config()
    model = build_model(cfg.model, "cpu", seed=0)
    apply_activation_checkpointing(model, "fine_grained")
    block = model.transformer["blocks"][0]
    assert block.attention.func is torch.utils.checkpoint.checkpoint
    assert type(block.attn_norm).__name__ == "CheckpointWrapper"


def test_compile_per_block_keeps_numbers_and_names():
    cfg = tiny_config()
    plain = build_model(cfg.model, "cpu", seed=0)
    compiled = copy.deepcopy(plain)
    # The eager backend exercises the wrapping (dynamo tracing each block) without a C++ toolchain.
    apply_compile(compiled, CompilerConfig(backend="eager"))
    assert all(type(b).__name__ == "OptimizedModule" for b in compiled.transformer["blocks"])
    ids = torch.randint(
        0,
        cfg.model.vocab_size,
        (2, cfg.model.max_sequence_length),
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(compiled(ids), plain(ids), rtol=0, atol=0)
    assert [clean_param_name(n) for n, _ in compiled.named_parameters()] == [
        n for n, _ in plain.named_parameters()
    ]


def test_parallelize_on_one_process_initializes_like_build_model():
    cfg = tiny_config().model_copy(update={"activation_checkpointing": "one_in_two"})
    world = init_world("cpu")
    model = parallelize_model(build_model(cfg.model, "meta"), cfg, world, seed=11)
    reference = build_model(cfg.model, "cpu", seed=11).state_dict()
    state = full_model_state(model)
    assert list(state) == list(reference)
    for name, tensor in reference.items():
        assert torch.equal(state[name], tensor), name
    # Another seed gives other weights: the seed is really used.
    other = parallelize_model(build_model(cfg.model, "meta"), cfg, world, seed=12)
    assert not torch.equal(
        full_model_state(other)["transformer.wte.weight"], reference["transformer.wte.weight"]
    )


def test_parallelize_refuses_a_materialized_model():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="meta device"):
        parallelize_model(build_model(cfg.model, "cpu", seed=0), cfg, init_world("cpu"), seed=0)


def test_full_model_state_is_a_copy_and_loads_back():
    cfg = tiny_config()
    model = build_model(cfg.model, "cpu", seed=3)
    state = full_model_state(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not torch.equal(state["transformer.wte.weight"], model.transformer["wte"].weight)
    load_full_model_state(model, state)
    for name, tensor in build_model(cfg.model, "cpu", seed=3).state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_load_full_model_state_names_mismatched_shapes():
    cfg = tiny_config()
    model = build_model(cfg.model, "cpu", seed=3)
    state = full_model_state(build_model(tiny_config(d_model=48).model, "cpu", seed=3))
    with pytest.raises(CheckpointError) as err:
        load_full_model_state(model, state)
    assert any(
        "transformer.wte.weight: (64, 48) given, (64, 32) in the model" in d for d in err.value.details
    )


def test_microbatch_sync_is_a_no_op_without_fsdp():
    model = build_model(tiny_config().model, "cpu", seed=0)
    microbatch_sync(model, is_last=False)  # must not raise on a plain module
    assert not any(hasattr(m, "set_requires_gradient_sync") for m in model.modules())


@pytest.mark.parametrize(
    ("precision", "fsdp_precision", "expected"),
    [
        ("amp_bf16", "mixed", (torch.bfloat16, torch.float32)),
        ("amp_bf16", "pure", (torch.bfloat16, torch.bfloat16)),
        ("amp_fp16", "mixed", (torch.float16, torch.float32)),
        ("amp_bf16", None, None),
        ("fp32", "mixed", None),
        (None, "mixed", None),
    ],
)
def test_mixed_precision_policy_follows_config(precision, fsdp_precision, expected):
    cfg = tiny_config().model_copy(
        update={"precision": precision, "fsdp": FSDPConfig(precision=fsdp_precision)}
    )
    policy = mixed_precision_policy(cfg)
    if expected is None:
        assert policy is None
    else:
        assert (policy.param_dtype, policy.reduce_dtype) == expected
        assert policy.cast_forward_inputs is False  # RoPE tables stay fp32


@pytest.mark.parametrize(
    ("strategy", "replicas", "expected"),
    [
        ("FULL_SHARD", None, (8,)),
        ("SHARD_GRAD_OP", None, (8,)),
        ("NO_SHARD", None, (8, 1)),
        ("HYBRID_SHARD", 2, (2, 4)),
        ("_HYBRID_SHARD_ZERO2", 4, (4, 2)),
    ],
)
def test_mesh_shape_follows_sharding_strategy(strategy, replicas, expected):
    cfg = FSDPConfig(sharding_strategy=strategy, hybrid_sharding_num_model_replicas=replicas)
    assert mesh_shape(cfg, 8) == expected


def test_hybrid_replicas_must_divide_world():
    with pytest.raises(ConfigError):
        mesh_shape(FSDPConfig(sharding_strategy="HYBRID_SHARD", hybrid_sharding_num_model_replicas=3), 8)
