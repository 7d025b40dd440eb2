"""The shipped presets: they load, carry the official settings, and their derived numbers are right."""

import json
import subprocess

import pytest

from olmo_cli.config import derived
from olmo_cli.config.loader import load_config
from olmo_cli.config.presets import preset_names
from tests.cli._helpers import run_olmo

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
_7B = (3e-4, "linear_with_warmup", "steps", 5000, None, 2048, 2, 2048, None, False, False, "2e12T")
_7B_2024 = (3e-4, "cosine_with_warmup", "tokens", 10485760000, 3e12, 1024, 2, 4096, 8.0, False, True, "2ep")
OFFICIAL = {
    "1b": (4e-4, "cosine_with_warmup", "steps", 2000, None, 2048, 8, 2048, None, True, False, 739328),
    "7b": _7B,
    "7b-twin-2t": _7B,
    "7b-0424": _7B_2024,
    "7b-0724": _7B_2024,
    "65b": (
        1.5e-4,
        "cosine_with_warmup",
        "tokens",
        10485760000,
        2e12,
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
    one, eight = derived.memory_per_rank(cfg, 1), derived.memory_per_rank(cfg, 8)
    assert eight.sharded_states == 16 * 6_888_095_744 // 8
    assert eight.total < one.total
    assert eight.activations == one.activations  # per micro-batch, independent of the GPU count
    checkpointed = load_config(preset="7b", overrides=["activation_checkpointing=whole_layer"]).config
    assert derived.memory_per_rank(checkpointed, 8).activations < eight.activations / 10
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


def _json(*args: str, **kwargs) -> dict:
    proc = run_olmo(*args, "--json", **kwargs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("name", "gpus", "sets"),
    [
        ("1b", 8, []),
        ("1b", 4, ["activation_checkpointing=whole_layer", "device_train_microbatch_size=4"]),
        ("tiny", 1, ["precision=fp32"]),
        ("tiny", 2, ["precision=amp_fp16", "activation_checkpointing=one_in_three"]),
    ],
)
def test_presets_show_and_the_dry_run_report_the_same_plan(tmp_path, name, gpus, sets):
    overrides = [arg for s in sets for arg in ("--set", s)]
    shown = _json("presets", "show", name, "--gpus", str(gpus), *overrides)["derived"]
    planned = _json(
        *("train", "--preset", name, "--dry-run", "--nproc-per-node", str(gpus), *overrides),
        *("--set", "speed_monitor.gpu_flops_available=1e12"),  # no peak measured: only the plan matters
        cwd=tmp_path,
    )
    same = (
        "params",
        "non_embedding_params",
        "forward_flops_per_token",
        "backward_flops_per_token",
        "training_flops_per_token",
        "precision",
    )
    assert {k: shown[k] for k in same} == {k: planned[k] for k in same}
    memory, per_rank = shown["memory_per_gpu"], planned["memory"]
    assert memory["gpus"] == planned["world_size"] == gpus
    states = per_rank["params_bytes"] + per_rank["grads_bytes"] + per_rank["optimizer_bytes"]
    assert memory["sharded_states_bytes"] == states
    for key in ("gathered_params_bytes", "activations_bytes", "logits_bytes", "total_bytes"):
        assert memory[key] == per_rank[key], key


def test_presets_show_plans_in_the_configs_precision():
    bf16 = derived.summarize(load_config(preset="tiny").config).memory
    fp32 = derived.summarize(load_config(preset="tiny", overrides=["precision=fp32"]).config).memory
    assert bf16.gathered_params == 2 * 3_670_016 and fp32.gathered_params == 0  # one GPU: no copy in fp32
    assert fp32.activations == 2 * bf16.activations
    assert fp32.sharded_states == bf16.sharded_states
    out = run_olmo("presets", "show", "tiny", "--set", "precision=fp32", COLUMNS="200")
    assert out.returncode == 0, out.stderr
    assert "memory per GPU (1 GPU, FSDP, fp32, AdamW)" in out.stdout
    assert "gathered fp32 parameters" in out.stdout


@pytest.mark.parametrize(
    ("name", "count"), [("1b", "1,176,764,416"), ("7b", "6,888,095,744"), ("65b", "65,584,234,496")]
)
def test_presets_show_prints_exact_counts(name, count):
    out = subprocess.run(
        ["olmo", "presets", "show", name, "--gpus", "8"], capture_output=True, text=True, check=True
    )
    assert count in out.stdout
    assert "memory per GPU (8 GPUs" in out.stdout
