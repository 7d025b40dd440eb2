"""Shapes, names, construction cost, precision and the less common architecture switches."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from olmo_cli.config.schema import ModelConfig
from olmo_cli.model.olmo import LayerNorm, OLMo, apply_rope, build_model, rope_tables
from olmo_cli.model.state_dict import normalize_upstream_keys
from tests._fixtures import OLMO_1_ARCH, model_config

OLMO_1 = dict(vocab_size=50280, embedding_size=50304, init_fn="mitchell", **OLMO_1_ARCH)
PRESETS = {
    "1b": ModelConfig(d_model=2048, n_heads=16, n_layers=16, mlp_ratio=8, weight_tying=True, **OLMO_1),
    "7b": ModelConfig(
        d_model=4096, n_heads=32, n_layers=32, mlp_hidden_size=22016, weight_tying=False, **OLMO_1
    ),
    "65b": ModelConfig(
        d_model=8192, n_heads=64, n_layers=80, mlp_hidden_size=44032, weight_tying=False, **OLMO_1
    ),
    "70b": ModelConfig(
        d_model=8192,
        n_heads=64,
        n_kv_heads=8,
        n_layers=80,
        mlp_hidden_size=57344,
        weight_tying=False,
        **OLMO_1,
    ),
}
# (tensors, att_proj rows, ff_proj rows, block ff_out columns, total parameters), from upstream's inventory.
EXPECTED = {
    "1b": (65, 6144, 16384, 8192, 1_176_764_416),
    "7b": (130, 12288, 22016, 11008, 6_888_095_744),
    "65b": (322, 24576, 44032, 22016, 65_584_234_496),
    "70b": (322, 10240, 57344, 28672, 69_275_222_016),
}


def upstream_keys(n_layers: int, tied: bool) -> list[str]:
    keys = ["transformer.wte.weight"]
    for i in range(n_layers):
        keys += [
            f"transformer.blocks.{i}.{name}.weight" for name in ("attn_out", "ff_out", "att_proj", "ff_proj")
        ]
    return keys if tied else keys + ["transformer.ff_out.weight"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_inventory_on_meta(preset: str) -> None:
    cfg = PRESETS[preset]
    tensors, att_rows, ff_rows, ff_cols, total = EXPECTED[preset]
    started = time.perf_counter()
    model = build_model(cfg, "meta")
    assert time.perf_counter() - started < 1.0
    sd = model.state_dict()
    assert list(sd) == upstream_keys(cfg.n_layers, cfg.weight_tying)
    assert len(sd) == tensors
    d = cfg.d_model
    assert sd["transformer.wte.weight"].shape == (50304, d)
    for i in (0, cfg.n_layers - 1):
        assert sd[f"transformer.blocks.{i}.att_proj.weight"].shape == (att_rows, d)
        assert sd[f"transformer.blocks.{i}.attn_out.weight"].shape == (d, d)
        assert sd[f"transformer.blocks.{i}.ff_proj.weight"].shape == (ff_rows, d)
        assert sd[f"transformer.blocks.{i}.ff_out.weight"].shape == (d, ff_cols)
    if not cfg.weight_tying:
        assert sd["transformer.ff_out.weight"].shape == (50304, d)
    assert sum(p.numel() for p in model.parameters()) == total
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


def small(**overrides: object) -> ModelConfig:
    sizes = dict(d_model=64, vocab_size=100, embedding_size=128)
    return model_config(**{**sizes, "init_fn": "mitchell", **overrides})


def tokens(batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_state_dict_keys_of_a_built_model() -> None:
    for tied in (True, False):
        model = build_model(small(n_layers=3, weight_tying=tied), seed=0)
        assert list(model.state_dict()) == upstream_keys(3, tied)
        assert not list(model.buffers())


def test_upstream_style_keys_load() -> None:
    cfg = small(n_layers=4, weight_tying=False, layer_norm_with_affine=True, include_bias=True)
    source = build_model(cfg, seed=1)
    upstream: dict[str, torch.Tensor] = {}
    for key, value in source.state_dict().items():
        if ".attn_norm." in key:
            key = key.replace(".attn_norm.", ".norm.")  # the legacy shared norm...
        elif ".ff_norm." in key:
            continue  # ...which has no ff_norm of its own
        if key.startswith("transformer.blocks."):
            layer, rest = key.removeprefix("transformer.blocks.").split(".", 1)
            key = f"transformer.block_groups.{int(layer) // 2}.{int(layer) % 2}.{rest}"
        upstream[f"_fsdp_wrapped_module.{key.replace('.', '._fsdp_wrapped_module.', 1)}"] = value
    # attn_norm and ff_norm start equal in the source, so the legacy copy reproduces it exactly.
    target = OLMo(cfg)
    target.load_state_dict(normalize_upstream_keys(upstream), strict=True)
    with torch.no_grad():
        assert torch.equal(source(tokens()), target(tokens()))


def _record_dtype(seen: dict[str, torch.dtype], name: str) -> Callable[..., None]:
    def hook(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        seen.setdefault(name, output.dtype)

    return hook


def test_bf16_autocast_close_to_fp32_with_norms_in_fp32() -> None:
    cfg = small(n_layers=3)
    model = build_model(cfg, seed=2).eval()
    seen: dict[str, torch.dtype] = {}
    block = model.transformer["blocks"][0]
    for name, module in [
        ("attn_norm", block.attn_norm),
        ("ln_f", model.transformer["ln_f"]),
        ("att_proj", block.att_proj),
    ]:
        module.register_forward_hook(_record_dtype(seen, name))
    with torch.no_grad():
        reference = model(tokens())
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(tokens())
    assert seen == {"attn_norm": torch.float32, "ln_f": torch.float32, "att_proj": torch.bfloat16}
    assert mixed.dtype == torch.bfloat16
    error = (mixed.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05


def test_layer_norm_of_bf16_input_is_computed_in_fp32() -> None:
    norm = LayerNorm(64, kind="default", eps=1e-5, affine=False, bias=False)
    x = (torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 3 + 1).to(torch.bfloat16)
    exact = torch.nn.functional.layer_norm(x.float(), (64,), eps=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x), exact)  # fp32 out under autocast, as CUDA autocast gives upstream
    assert torch.equal(norm(x), exact.to(torch.bfloat16))  # without autocast: the input dtype


def test_pure_bf16_model_keeps_bf16_activations() -> None:
    model = build_model(small(), seed=3).to(torch.bfloat16).eval()
    with torch.no_grad():
        assert model(tokens()).dtype == torch.bfloat16


def test_rope_runs_in_fp32_and_casts_back() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 16, 32, generator=gen).to(torch.bfloat16)
    k = torch.randn(2, 2, 16, 32, generator=gen).to(torch.bfloat16)
    cos, sin = rope_tables(torch.arange(16), 32, 10000)
    assert cos.dtype == torch.float32 and cos.shape == (16, 32)
    q_rot, k_rot = apply_rope(q, k, cos, sin)
    q_ref, k_ref = apply_rope(q.float(), k.float(), cos, sin)
    assert q_rot.dtype == torch.bfloat16 and torch.equal(q_rot, q_ref.to(torch.bfloat16))
    assert torch.equal(k_rot, k_ref.to(torch.bfloat16))


def test_rope_pairs_dimension_j_with_j_plus_half() -> None:
    """Half-split convention: at position p, the pair (j, j + hd/2) rotates by angle p * theta^(-2j/hd)."""
    head_dim, position, j = 8, 3, 1
    q = torch.zeros(1, 1, 1, head_dim)
    q[..., j] = 1.0
    cos, sin = rope_tables(torch.tensor([position]), head_dim, 10000)
    rotated, _ = apply_rope(q, q, cos, sin)
    angle = torch.tensor(position * 10000 ** (-2 * j / head_dim))
    expected = torch.zeros(head_dim)
    expected[j], expected[j + head_dim // 2] = angle.cos(), angle.sin()
    torch.testing.assert_close(rotated.flatten(), expected)


def test_positions_shift_leaves_rope_logits_unchanged() -> None:
    """RoPE attention depends on relative positions only, so an offset (a KV cache's) changes nothing."""
    model = build_model(small(), seed=4).eval()
    ids = tokens(seq=16)
    with torch.no_grad():
        plain = model(ids)
        assert torch.equal(plain, model(ids, positions=torch.arange(16)))
        shifted = model(ids, positions=torch.arange(16) + 7)
    torch.testing.assert_close(shifted, plain, atol=1e-4, rtol=1e-4)


def test_causality() -> None:
    model = build_model(small(), seed=5).eval()
    ids = tokens(seq=16)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 100
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :10], model(changed)[:, :10])


VARIANTS = [
    pytest.param(dict(activation_type="gelu", mlp_ratio=2), id="gelu"),
    pytest.param(dict(activation_type="relu"), id="relu"),
    pytest.param(
        dict(norm_after=True, layer_norm_type="rms", layer_norm_with_affine=True), id="norm-after-rms"
    ),
    pytest.param(dict(layer_norm_type="low_precision", include_bias=True), id="low-precision"),
    pytest.param(dict(attention_layer_norm=True, n_kv_heads=2), id="qk-norm"),
    pytest.param(
        dict(embedding_layer_norm=True, scale_logits=True, layer_norm_with_affine=True), id="emb-norm"
    ),
    pytest.param(dict(rope=False), id="learned-positions"),
    pytest.param(dict(rope_full_precision=False, rope_theta=500000), id="rope-low-precision"),
    pytest.param(dict(attention_dropout=0.1, residual_dropout=0.1, embedding_dropout=0.1), id="dropout"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_variants_run_train_and_eval(overrides: dict[str, object]) -> None:
    model = build_model(small(**overrides), seed=6)
    ids = tokens()
    model.train()
    loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        first, second = model(ids), model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(ids)
    assert torch.equal(first, second)  # dropout is off in eval
    assert torch.isfinite(mixed).all()


def test_optional_parameter_names() -> None:
    cfg = small(
        n_layers=1, attention_layer_norm=True, n_kv_heads=2, layer_norm_with_affine=True,
        include_bias=True, embedding_layer_norm=True, weight_tying=False, rope=False,
    )  # fmt: skip
    shapes = {key: tuple(value.shape) for key, value in OLMo(cfg).state_dict().items()}
    assert shapes["transformer.blocks.0.k_norm.weight"] == (32,)  # n_kv_heads * head_dim
    assert shapes["transformer.blocks.0.q_norm.bias"] == (64,)
    assert shapes["transformer.blocks.0.att_proj.bias"] == (128,)
    assert shapes["transformer.emb_norm.weight"] == (64,)
    assert shapes["transformer.ln_f.bias"] == (64,)
    assert shapes["transformer.wpe.weight"] == (64, 64)
    assert shapes["transformer.ff_out.bias"] == (128,)
    # Upstream's registration order: the QK norms come first in a block.
    block_keys = [key.split(".", 3)[3] for key in shapes if key.startswith("transformer.blocks.0.")]
    assert block_keys[:4] == ["k_norm.weight", "k_norm.bias", "q_norm.weight", "q_norm.bias"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(alibi=True, rope=False), "alibi"),
        (dict(block_type="llama"), "block_type"),
        (dict(block_group_size=2), "block_group_size"),
    ],
)
def test_unsupported_switches_raise(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OLMo(small(**overrides))
