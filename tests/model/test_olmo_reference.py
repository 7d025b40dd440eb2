"""Our OLMo against an independent implementation: transformers' OlmoForCausalLM, fed the same weights
through the HF mapping, must produce the same logits in fp32."""

from __future__ import annotations

import pytest
import torch
import transformers  # the dev extra installs it: a missing reference fails, never skips

from olmo_cli.config.schema import ModelConfig
from olmo_cli.convert.hf import from_hf_state_dict, hf_config_dict, to_hf_state_dict
from olmo_cli.model.olmo import OLMo, build_model
from tests._fixtures import model_config

VOCAB, BATCH, SEQ = 100, 2, 32


def tiny_config(**overrides: object) -> ModelConfig:
    sizes = dict(d_model=64, n_layers=3, vocab_size=VOCAB, embedding_size=128, eos_token_id=2)
    # `normal` with a large std: activations big enough that a wrong detail shows in the logits.
    return model_config(**{**sizes, "init_fn": "normal", "init_std": 0.1, **overrides})


def hf_reference(cfg: ModelConfig, native_sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    hf_cfg = transformers.OlmoConfig(**hf_config_dict(cfg))
    hf_cfg._attn_implementation = "eager"  # plain matmul-softmax: independent of our SDPA path
    model = transformers.OlmoForCausalLM(hf_cfg)
    model.load_state_dict(to_hf_state_dict(native_sd, cfg), strict=True)
    return model.eval()


def qkv_peak(model: OLMo, input_ids: torch.Tensor) -> float:
    """Largest |q|, |k| or |v| entry before clipping, seen at the fused projections."""
    peaks: list[float] = []
    hooks = [
        block.att_proj.register_forward_hook(lambda _m, _i, out: peaks.append(out.abs().max().item()))
        for block in model.transformer["blocks"]
    ]
    with torch.no_grad():
        model(input_ids)
    for hook in hooks:
        hook.remove()
    return max(peaks)


CASES = [
    pytest.param(dict(weight_tying=True), id="tied"),
    pytest.param(dict(weight_tying=False), id="untied"),
    pytest.param(dict(weight_tying=True, clip_qkv=0.6), id="tied-clip"),
    pytest.param(dict(weight_tying=False, clip_qkv=0.6), id="untied-clip"),
    pytest.param(dict(weight_tying=False, n_kv_heads=2), id="gqa"),
    pytest.param(dict(weight_tying=True, n_kv_heads=1, clip_qkv=0.6), id="mqa-clip"),
]


@pytest.mark.parametrize("overrides", CASES)
def test_logits_match_transformers(overrides: dict[str, object]) -> None:
    cfg = tiny_config(**overrides)
    model = build_model(cfg, seed=1234).eval()
    reference = hf_reference(cfg, model.state_dict())
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
    if cfg.clip_qkv is not None:
        # Otherwise the clip path would be compared without ever being exercised.
        assert qkv_peak(model, input_ids) > 1.5 * cfg.clip_qkv
    with torch.no_grad():
        ours = model(input_ids)
        theirs = reference(input_ids).logits
    assert ours.shape == (BATCH, SEQ, cfg.padded_vocab_size)
    assert ours.abs().max() > 1.0  # not trivially small
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, f"max |logit difference| {diff:.3g}"


def test_clipping_changes_the_output() -> None:
    """clip_qkv must act: the same weights without the clip give different logits."""
    clipped = tiny_config(clip_qkv=0.6)
    model = build_model(clipped, seed=3).eval()
    free = OLMo(tiny_config()).eval()
    free.load_state_dict(model.state_dict())
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(input_ids) - free(input_ids)).abs().max() > 1e-2


def test_swapped_swiglu_halves_would_be_caught() -> None:
    """The comparison is sharp enough to see the classic mistake of swapping up and gate."""
    cfg = tiny_config()
    model = build_model(cfg, seed=5).eval()
    hf_sd = to_hf_state_dict(model.state_dict(), cfg)
    for layer in range(cfg.n_layers):
        up, gate = f"model.layers.{layer}.mlp.up_proj.weight", f"model.layers.{layer}.mlp.gate_proj.weight"
        hf_sd[up], hf_sd[gate] = hf_sd[gate], hf_sd[up]
    reference = hf_reference(cfg, from_hf_state_dict(hf_sd, cfg))
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(input_ids) - reference(input_ids).logits).abs().max() > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_hf_round_trip_is_bitwise(tied: bool) -> None:
    cfg = tiny_config(weight_tying=tied, n_kv_heads=2)
    native = build_model(cfg, seed=9).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(native, cfg), cfg)
    assert list(back) == list(native)
    for key, value in native.items():
        assert torch.equal(back[key], value), key


def test_hf_state_dict_shares_no_storage_with_fused_tensors() -> None:
    cfg = tiny_config()
    native = build_model(cfg, seed=0).state_dict()
    hf_sd = to_hf_state_dict(native, cfg)
    hf_sd["model.layers.0.self_attn.q_proj.weight"].zero_()
    assert native["transformer.blocks.0.att_proj.weight"].abs().sum() > 0


def test_hf_config_fields() -> None:
    cfg = tiny_config(mlp_hidden_size=200, n_kv_heads=2, clip_qkv=8.0, weight_tying=False, rope_theta=500000)
    fields = hf_config_dict(cfg)
    assert fields["architectures"] == ["OlmoForCausalLM"] and fields["model_type"] == "olmo"
    assert fields["vocab_size"] == 128  # the padded embedding size, not the tokenizer's
    assert fields["intermediate_size"] == 100  # half the fused width
    assert fields["num_key_value_heads"] == 2
    assert fields["rope_theta"] == 500000.0 and isinstance(fields["rope_theta"], float)
    assert fields["clip_qkv"] == 8.0 and fields["tie_word_embeddings"] is False
    assert fields["eos_token_id"] == 2 and fields["pad_token_id"] == 1 and fields["bos_token_id"] is None


def test_hf_config_fixes_eos_zero_for_olmo_vocab() -> None:
    cfg = tiny_config(vocab_size=50280, embedding_size=50304, eos_token_id=0)
    assert hf_config_dict(cfg)["eos_token_id"] == 50279
    assert hf_config_dict(cfg, fix_eos_token_id=False)["eos_token_id"] == 0


@pytest.mark.parametrize(
    "overrides",
    [
        dict(include_bias=True),
        dict(layer_norm_with_affine=True),
        dict(rope=False),
        dict(attention_layer_norm=True),
    ],
)
def test_hf_refuses_what_it_cannot_express(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="OlmoForCausalLM"):
        hf_config_dict(tiny_config(**overrides))


def test_from_hf_rejects_unknown_and_missing_keys() -> None:
    cfg = tiny_config(weight_tying=False)
    hf_sd = to_hf_state_dict(build_model(cfg, "cpu").state_dict(), cfg)
    with pytest.raises(ValueError, match="unexpected"):
        from_hf_state_dict({**hf_sd, "model.extra.weight": torch.zeros(1)}, cfg)
    del hf_sd["lm_head.weight"]
    with pytest.raises(ValueError, match="missing"):
        from_hf_state_dict(hf_sd, cfg)
