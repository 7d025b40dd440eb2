"""The shipped presets: they load, carry the official settings, and their derived numbers are right."""

import json
import subprocess

import pytest
import torch

from olmo_cli.config import derived
from olmo_cli.config.loader import load_config
from olmo_cli.config.presets import preset_names
from olmo_cli.model.olmo import build_model
from tests.cli._helpers import run_olmo

ALL = [
    "1b",
    "65b",
    "7b",
    "7b-0424",
    "7b-0724",
    "7b-twin-2t",
    "olmo2-13b",
    "olmo2-1b",
    "olmo2-32b",
    "olmo2-7b",
    "olmo2-tiny",
    "tiny",
]
OLMO2 = [name for name in ALL if name.startswith("olmo2-")]


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
    ("name", "count"),
    [
        ("1b", "1,176,764,416"),
        ("7b", "6,888,095,744"),
        ("65b", "65,584,234,496"),
        ("olmo2-1b", "1,484,916,736"),
        ("olmo2-7b", "7,298,617,344"),
        ("olmo2-13b", "13,716,198,400"),
        ("olmo2-32b", "32,234,279,936"),
    ],
)
def test_presets_show_prints_exact_counts(name, count):
    out = subprocess.run(
        ["olmo", "presets", "show", name, "--gpus", "8"], capture_output=True, text=True, check=True
    )
    assert count in out.stdout
    assert "memory per GPU (8 GPUs" in out.stdout


def _olmo2_reference_count(model) -> int:
    """Parameters of transformers' Olmo2ForCausalLM built on the meta device from the preset's sizes."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    hf = Olmo2Config(
        vocab_size=model.embedding_size,
        hidden_size=model.d_model,
        intermediate_size=model.mlp_hidden // 2,  # ff_proj holds the SwiGLU gate and value halves
        num_hidden_layers=model.n_layers,
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.effective_n_kv_heads,
        max_position_embeddings=model.max_sequence_length,
        rope_theta=model.rope_theta,
        rms_norm_eps=model.layer_norm_eps,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return sum(p.numel() for p in Olmo2ForCausalLM(hf).parameters())


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("olmo2-1b", 1_484_916_736),
        ("olmo2-7b", 7_298_617_344),
        ("olmo2-13b", 13_716_198_400),
        ("olmo2-32b", 32_234_279_936),
    ],
)
def test_olmo2_parameter_counts_equal_transformers(name, params):
    model = load_config(preset=name).config.model
    assert derived.num_params(model) == params
    assert _olmo2_reference_count(model) == params
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model(model, "meta").parameters()) == params


def test_olmo2_tiny_has_the_olmo2_block_at_tinys_size():
    tiny, olmo2 = load_config(preset="tiny").config.model, load_config(preset="olmo2-tiny").config.model
    assert _olmo2_reference_count(olmo2) == derived.num_params(olmo2)
    for key in ("d_model", "n_heads", "n_layers", "mlp_ratio", "max_sequence_length", "vocab_size"):
        assert getattr(olmo2, key) == getattr(tiny, key), key
    assert (olmo2.norm_after, olmo2.attention_layer_norm, olmo2.layer_norm_type) == (True, True, "rms")
    assert (olmo2.weight_tying, olmo2.init_fn, olmo2.rope_theta) == (False, "normal", 500000)


# ((d_model, heads, layers, ff_proj width = 2 x SwiGLU hidden, kv heads),
#  lr, t_warmup in tokens, t_max, batch, micro-batch, max_duration, seed)
OLMO2_OFFICIAL = {
    "olmo2-1b": ((2048, 16, 16, 16384, 16), 4e-4, 8388608000, 5e12, 512, 4, "4e12T", 6198),
    "olmo2-7b": ((4096, 32, 32, 22016, 32), 3e-4, 8388608000, 5e12, 1024, 2, "1ep", 6198),
    "olmo2-13b": ((5120, 40, 40, 27648, 40), 3e-4, 8388608000, 5e12, 2048, 2, "1ep", 6198),
    "olmo2-32b": ((5120, 40, 64, 55296, 8), 6e-4, 2000 * 2048 * 4096, 6.5e12, 2048, 4, "6.5e12T", 34521),
}


@pytest.mark.parametrize("name", list(OLMO2_OFFICIAL))
def test_olmo2_presets_carry_the_official_stage1_settings(name):
    cfg = load_config(preset=name).config
    (d, heads, layers, hidden, kv), lr, warmup, t_max, batch, micro, duration, seed = OLMO2_OFFICIAL[name]
    m = cfg.model
    assert (m.d_model, m.n_heads, m.n_layers, m.mlp_hidden, m.effective_n_kv_heads) == (
        d,
        heads,
        layers,
        hidden,
        kv,
    )
    assert (m.norm_after, m.layer_norm_type, m.layer_norm_with_affine, m.layer_norm_eps) == (
        True,
        "rms",
        True,
        1e-6,
    )
    assert (m.attention_layer_norm, m.attention_layer_norm_with_affine, m.rope_theta) == (True, True, 500000)
    assert (m.init_fn, m.init_std, m.init_cutoff_factor, m.weight_tying) == ("normal", 0.02, 3, False)
    assert (m.vocab_size, m.embedding_size, m.eos_token_id, m.pad_token_id) == (
        100278,
        100352,
        100257,
        100277,
    )
    assert (m.max_sequence_length, m.include_bias, m.clip_qkv) == (4096, False, None)
    assert cfg.tokenizer.identifier == "tokenizers/allenai_dolma2.json"
    assert (cfg.optimizer.learning_rate, cfg.optimizer.eps, cfg.optimizer.weight_decay) == (lr, 1e-8, 0.1)
    assert (cfg.optimizer.decay_embeddings, cfg.optimizer.decay_norm_and_bias) == (False, True)
    s = cfg.scheduler
    assert (s.name, s.units, s.t_warmup, s.t_max, s.alpha_f) == (
        "cosine_with_warmup",
        "tokens",
        warmup,
        t_max,
        0.1,
    )
    assert (cfg.global_train_batch_size, cfg.device_train_microbatch_size) == (batch, micro)
    assert (cfg.max_duration, cfg.seed, cfg.softmax_auxiliary_loss) == (duration, seed, True)
    assert cfg.data.memmap_dtype == "uint32"
    if name == "olmo2-32b":  # OLMo-core's script sets no repetition filter
        assert cfg.data.instance_filter is None
    else:
        rule = cfg.data.instance_filter
        assert (rule.repetition_max_period, rule.repetition_min_period, rule.repetition_max_count) == (
            13,
            1,
            32,
        )


def test_presets_list_groups_the_families():
    proc = run_olmo("presets", "list", COLUMNS="160")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("OLMo 1") < out.index("  tiny") < out.index("  65b") < out.index("OLMo 2")
    assert (
        out.index("OLMo 2") < out.index("  olmo2-tiny") < out.index("  olmo2-1b") < out.index("  olmo2-32b")
    )
    assert "40 (kv 8)" in out
    listed = _json("presets", "list")
    assert {row["name"]: row["family"] for row in listed} == {
        name: "OLMo 2" if name.startswith("olmo2-") else "OLMo 1" for name in ALL
    }


def test_presets_list_json_gives_each_field_one_type():
    """A script reads a field the same way for every preset: counts are ints whether they come from the
    schedule (1b) or a preset's published figure (7b-0424), and nothing is a float that counts."""
    listed = _json("presets", "list")
    types: dict[str, set[str]] = {}
    for row in listed:
        flat = {**row, **{f"memory_per_gpu.{k}": v for k, v in row.pop("memory_per_gpu").items()}}
        for key, value in flat.items():
            types.setdefault(key, set()).add(type(value).__name__)
    assert {k: v for k, v in types.items() if len(v) > 1} == {}
    assert types["training_tokens"] == {"int"} and types["training_flops"] == {"int"}
    by_name = {row["name"]: row for row in listed}
    assert by_name["7b-0424"]["training_tokens"] == 2_050_000_000_000
