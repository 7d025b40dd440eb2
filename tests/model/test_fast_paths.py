"""The model's speed paths against plain references: RoPE as one autograd node (forward bit-identical to
the textbook formula in fp32, backward equal to autograd through it), and whole-model gradients equal to
transformers' OlmoForCausalLM fed the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from olmo_cli.convert.hf import from_hf_state_dict, hf_config_dict, to_hf_state_dict
from olmo_cli.model.olmo import build_model, rope_tables, rotary
from tests.model.test_olmo_reference import tiny_config


def _textbook(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def test_rotary_forward_is_bit_identical_and_backward_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 16, generator=gen, requires_grad=True)
    cos, sin = rope_tables(torch.arange(10), 16, 10000)
    ours = rotary(x, cos, sin)
    reference = _textbook(x, cos, sin)
    assert torch.equal(ours, reference)
    grad = torch.randn(ours.shape, generator=gen)
    (ours_grad,) = torch.autograd.grad(ours, x, grad)
    (reference_grad,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-6, atol=1e-6)


def test_rotary_of_bf16_runs_in_fp32_and_rounds_once():
    x = torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    cos, sin = rope_tables(torch.arange(8), 32, 10000)
    out = rotary(x, cos, sin)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _textbook(x.float(), cos, sin).to(torch.bfloat16))


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2, "weight_tying": False}], ids=["mha", "gqa"])
def test_gradients_equal_transformers(overrides):
    cfg = tiny_config(**overrides)
    model = build_model(cfg, seed=3).train()
    hf_cfg = transformers.OlmoConfig(**hf_config_dict(cfg))
    hf_cfg._attn_implementation = "eager"  # an independent attention path
    hf = transformers.OlmoForCausalLM(hf_cfg).train()
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    target = torch.randn(2, 24, cfg.padded_vocab_size, generator=torch.Generator().manual_seed(5))
    (model(ids) * target).sum().backward()
    (hf(input_ids=ids).logits * target).sum().backward()
    hf_grads = {name: p.grad for name, p in hf.named_parameters()}
    if cfg.weight_tying:  # one tensor, listed once: its gradient already holds the output projection's part
        hf_grads["lm_head.weight"] = hf_grads["model.embed_tokens.weight"]
    theirs = from_hf_state_dict(hf_grads, cfg)
    for name, param in model.named_parameters():
        error = (param.grad - theirs[name]).norm() / theirs[name].norm()
        assert error < 1e-5, (name, error.item())  # fp32 sums in other orders: about 1e-6


@pytest.mark.parametrize("qk_norm", [False, True], ids=["fused", "qk-norm"])
def test_a_generations_rope_memo_gives_the_tables_a_forward_computes(qk_norm):
    from olmo_cli.model.olmo import RopeMemo, block_rope_tables

    cfg = tiny_config(attention_layer_norm=qk_norm, n_kv_heads=2)
    memo = RopeMemo(cfg, 300, torch.device("cpu"))
    for positions in (torch.arange(37), torch.tensor([299]), torch.tensor([[0, 0, 1, 2], [5, 6, 7, 8]])):
        for got, expected in zip(memo.take(positions), block_rope_tables(positions, cfg), strict=True):
            assert got.shape == expected.shape
            assert torch.equal(got, expected)


def test_a_bf16_models_cache_attends_in_fp32_and_agrees_with_a_bf16_cache():
    """generate.cache_dtype keeps a bf16 model's keys and values in fp32 on a CPU (faster attention); the
    logits of a prefill and decode steps agree with a bf16 cache's and a whole forward's, to bf16 rounding."""
    from olmo_cli.model.generate import KVCache, cache_dtype

    assert cache_dtype(torch.bfloat16, "cpu") == torch.float32
    assert cache_dtype(torch.float32, "cpu") == torch.float32
    assert cache_dtype(torch.bfloat16, "meta") == torch.bfloat16
    cfg = tiny_config()
    model = build_model(cfg, seed=2).eval().to(torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    runs = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            cache = KVCache(cfg.n_layers, 2, cfg.n_heads, cfg.head_dim, 12, dtype=dtype, device="cpu")
            prefill = model(ids[:, :8], torch.arange(8), cache)
            steps = [model(ids[:, i : i + 1], torch.tensor([i]), cache) for i in range(8, 12)]
            runs.append(torch.cat([prefill, *steps], dim=1).float())
        whole = model(ids).float()
    assert KVCache.for_model(model, 1, 4).keys.dtype == torch.float32
    for run in runs:
        torch.testing.assert_close(run, whole, rtol=0.05, atol=0.05)
