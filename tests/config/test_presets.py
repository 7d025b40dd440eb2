"""The shipped presets: they load, carry the official settings, and their derived numbers are right."""

import json
import subprocess

import pytest

from olmo_cli.config import derived
from olmo_cli.config.loader import load_config
from olmo_cli.config.presets import preset_names

ALL = ["1b", "65b", "7b", "7b-0424", "7b-0724", "7b-twin-2t", "tiny"]


def test_the_shipped_presets():
    assert preset_names() == ALL


@pytest.mark.parametrize("name", ALL)
def test_every_preset_loads_cleanly(name):
    loaded = load_config(preset=name)
    assert loaded.ignored == []  # a preset never sets something olmo would ignore
    assert loaded.preset is not None and loaded.preset.description
    assert loaded.config.run_name
    assert loaded.config.global_train_batch_size % loaded.config.device_train_microbatch_size == 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("1b", 1_176_764_416),
        ("7b", 6_888_095_744),
        ("7b-twin-2t", 6_888_095_744),
        ("7b-0424", 6_888_095_744),
        ("7b-0724", 6_888_095_744),
        ("65b", 65_584_234_496),
    ],
)
def test_exact_parameter_counts(name, params):
    assert derived.num_params(load_config(preset=name).config.model) == params


# (lr, scheduler, units, t_warmup, t_max, batch, micro, seq, clip_qkv, tied, decay_emb, max_duration)
OFFICIAL = {
    "1b": (4e-4, "cosine_with_warmup", "steps", 2000, None, 2048, 8, 2048, None, True, False, 739328),
    "7b": (3e-4, "linear_with_warmup", "steps", 5000, None, 2048, 2, 2048, None, False, False, "2e12T"),
    "7b-twin-2t": (
        3e-4,
        "linear_with_warmup",
        "steps",
        5000,
        None,
        2048,
        2,
        2048,
        None,
        False,
        False,
        "2e12T",
    ),
    "7b-0424": (
        3e-4,
        "cosine_with_warmup",
        "tokens",
        10485760000,
        3 * 10**12,
        1024,
        2,
        4096,
        8.0,
        False,
        True,
        "2ep",
    ),
    "7b-0724": (
        3e-4,
        "cosine_with_warmup",
        "tokens",
        10485760000,
        3 * 10**12,
        1024,
        2,
        4096,
        8.0,
        False,
        True,
        "2ep",
    ),
    "65b": (
        1.5e-4,
        "cosine_with_warmup",
        "tokens",
        10485760000,
        2 * 10**12,
        4096,
        1,
        2048,
        None,
        False,
        True,
        "2e12T",
    ),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_presets_carry_the_official_settings(name):
    cfg = load_config(preset=name).config
    lr, sched, units, warmup, t_max, batch, micro, seq, clip, tied, decay_emb, duration = OFFICIAL[name]
    assert cfg.optimizer.learning_rate == lr
    assert (cfg.scheduler.name, cfg.scheduler.units, cfg.scheduler.t_warmup) == (sched, units, warmup)
    assert cfg.scheduler.t_max == t_max and cfg.scheduler.alpha_f == 0.1
    assert (cfg.global_train_batch_size, cfg.device_train_microbatch_size) == (batch, micro)
    assert cfg.model.max_sequence_length == seq and cfg.model.clip_qkv == clip
    assert cfg.model.weight_tying is tied
    assert cfg.optimizer.decay_embeddings is decay_emb and cfg.optimizer.decay_norm_and_bias is decay_emb
    assert cfg.max_duration == duration
    assert (cfg.optimizer.name, cfg.optimizer.weight_decay, cfg.optimizer.eps) == ("adamw", 0.1, 1e-5)
    assert cfg.optimizer.betas == (0.9, 0.95)
    assert (cfg.precision, cfg.fsdp.precision, cfg.max_grad_norm, cfg.seed) == (
        "amp_bf16",
        "mixed",
        1.0,
        6198,
    )
    m = cfg.model
    assert (m.vocab_size, m.embedding_size, m.eos_token_id, m.pad_token_id) == (50280, 50304, 50279, 1)
    assert (m.rope, m.include_bias, m.layer_norm_with_affine, m.init_fn) == (True, False, False, "mitchell")
    assert m.attention_dropout == m.residual_dropout == m.embedding_dropout == 0.0


def test_flops_per_token_follow_upstreams_formula():
    model = load_config(preset="1b").config.model
    non_embedding = 1_176_764_416 - 50304 * 2048
    attention = 16 * 2048 * 2048
    assert derived.flops_per_token(model) == (
        2 * non_embedding + 4 * attention,
        4 * 1_176_764_416 + 8 * attention,
    )


def test_training_tokens():
    assert derived.training_tokens(load_config(preset="1b").config) == 739_328 * 2048 * 2048
    assert derived.training_tokens(load_config(preset="7b").config) == 2 * 10**12
    assert derived.training_tokens(load_config(preset="7b-0424").config) is None  # epochs: needs the data


def test_memory_estimate_shape():
    cfg = load_config(preset="7b").config
    one, eight = derived.memory_per_gpu(cfg, 1), derived.memory_per_gpu(cfg, 8)
    assert eight.sharded_states == 16 * 6_888_095_744 // 8
    assert eight.total < one.total
    assert eight.activations == one.activations  # per micro-batch, independent of the GPU count
    checkpointed = load_config(preset="7b", overrides=["activation_checkpointing=whole_layer"]).config
    assert derived.memory_per_gpu(checkpointed, 8).activations < eight.activations / 10
    # 7B on 8 GPUs with micro-batch 2 x 2048 tokens fits on an 80 GB card, as it did upstream.
    assert 20 * derived.GIB < eight.total < 80 * derived.GIB


def test_presets_show_cli_json():
    out = subprocess.run(
        ["olmo", "presets", "show", "7b", "--gpus", "8", "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(out.stdout)
    assert data["derived"]["params"] == 6_888_095_744
    assert data["derived"]["memory_per_gpu"]["gpus"] == 8
    assert data["config"]["model"]["d_model"] == 4096
    assert data["not_acted_on"] == []


@pytest.mark.parametrize(
    ("name", "count"), [("1b", "1,176,764,416"), ("7b", "6,888,095,744"), ("65b", "65,584,234,496")]
)
def test_presets_show_prints_exact_counts(name, count):
    out = subprocess.run(
        ["olmo", "presets", "show", name, "--gpus", "8"], capture_output=True, text=True, check=True
    )
    assert count in out.stdout
    assert "memory per GPU (8 GPUs" in out.stdout
