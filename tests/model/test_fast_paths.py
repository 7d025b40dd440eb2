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
