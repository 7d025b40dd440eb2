"""GGUF export of an OLMo 2 model in llama.cpp's `olmo2` architecture, read back with the `gguf`
package's reader: metadata, tensor names and shapes, and logits. The logits come from llama.cpp's olmo2
graph written out here from the file's tensors alone (QK-norm over whole q and k, "NEOX" half-split RoPE
on unpermuted rows, norms after attention and MLP, output norm and output), and must equal our model's."""

from __future__ import annotations

import gguf  # the gguf extra (and dev) installs it: a missing reference fails, never skips
import numpy as np
import pytest
import torch

from olmo_cli.config.loader import load_config
from olmo_cli.errors import UsageError
from olmo_cli.load.build import load_tokenizer
from olmo_cli.load.read import read_checkpoint
from olmo_cli.model.olmo import build_model
from olmo_cli.quant.gguf_export import write_gguf
from olmo_cli.quant.gguf_vocab import CL100K_SPLIT, pre_tokenizer_name
from tests._fixtures import write_checkpoint

from ._helpers import SEQ


def _olmo2(tmp_path, *overrides: str):
    sizes = [
        "model.d_model=128",
        "model.n_layers=2",
        f"model.max_sequence_length={SEQ}",
        "model.init_std=0.2",
    ]
    cfg = load_config(preset="olmo2-tiny", overrides=[*sizes, *overrides]).config
    model = build_model(cfg.model, seed=5)
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():  # norm weights away from 1, so a norm in the wrong place shows
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    path, model = write_checkpoint(tmp_path, cfg, model=model)
    found = read_checkpoint(path)
    return found, model


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _neox_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x: [t, heads, hd]; dims (i, i + hd/2) rotate by pos * theta^(-2i/hd)."""
    t, _, hd = x.shape
    angles = torch.arange(t)[:, None].double() * theta ** (-torch.arange(0, hd, 2).double() / hd)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    first, second = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1)


def llama_cpp_olmo2_logits(path, ids: torch.Tensor) -> torch.Tensor:
    """llama.cpp's olmo2 forward pass over one sequence, in float64, from the GGUF file alone."""
    reader = gguf.GGUFReader(str(path))
    f = {key: field.contents() for key, field in reader.fields.items()}
    w = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float64)) for t in reader.tensors}
    heads, kv_heads = f["olmo2.attention.head_count"], f["olmo2.attention.head_count_kv"]
    eps, theta = f["olmo2.attention.layer_norm_rms_epsilon"], f["olmo2.rope.freq_base"]
    x = w["token_embd.weight"][ids]
    t, d = x.shape
    hd = d // heads
    causal = torch.full((t, t), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(f["olmo2.block_count"]):
        b = lambda name, i=i: w[f"blk.{i}.{name}.weight"]  # noqa: E731
        q = _rms(x @ b("attn_q").T, b("attn_q_norm"), eps).view(t, heads, hd)
        k = _rms(x @ b("attn_k").T, b("attn_k_norm"), eps).view(t, kv_heads, hd)
        v = (x @ b("attn_v").T).view(t, kv_heads, hd)
        q, k = _neox_rope(q, theta), _neox_rope(k, theta)
        k, v = (z.repeat_interleave(heads // kv_heads, dim=1) for z in (k, v))
        scores = torch.einsum("qhd,khd->hqk", q, k) / hd**0.5 + causal
        attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, d)
        x = x + _rms(attended @ b("attn_output").T, b("post_attention_norm"), eps)
        mlp = (torch.nn.functional.silu(x @ b("ffn_gate").T) * (x @ b("ffn_up").T)) @ b("ffn_down").T
        x = x + _rms(mlp, b("post_ffw_norm"), eps)
    return _rms(x, w["output_norm.weight"], eps) @ w["output.weight"].T


@pytest.mark.parametrize("overrides", [[], ["model.n_kv_heads=2"]], ids=["mha", "gqa"])
def test_olmo2_gguf_has_llama_cpps_names_and_gives_our_logits(tmp_path, overrides):
    found, model = _olmo2(tmp_path, *overrides)
    cfg = found.config.model
    result = write_gguf(found, load_tokenizer(found), tmp_path / "m.gguf", file_type="f32")
    reader = gguf.GGUFReader(str(result.path))
    f = {key: field.contents() for key, field in reader.fields.items()}
    assert f["general.architecture"] == "olmo2"
    assert f["olmo2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["olmo2.rope.freq_base"] == pytest.approx(500000.0)
    assert f["olmo2.attention.head_count_kv"] == cfg.effective_n_kv_heads
    assert f["olmo2.feed_forward_length"] == cfg.mlp_hidden // 2
    assert "olmo2.attention.clamp_kqv" not in f and "olmo2.attention.layer_norm_epsilon" not in f
    per_block = (
        "attn_q attn_k attn_v attn_output attn_q_norm attn_k_norm post_attention_norm "
        "ffn_gate ffn_up ffn_down post_ffw_norm"
    ).split()
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{part}.weight" for i in range(cfg.n_layers) for part in per_block
    }
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected
    kv = cfg.effective_n_kv_heads * cfg.head_dim
    assert tensors["blk.0.attn_k_norm.weight"].shape.tolist() == [kv]
    assert tensors["blk.0.attn_q_norm.weight"].shape.tolist() == [cfg.d_model]
    ids = torch.randint(2, cfg.vocab_size, (SEQ,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = model(ids[None])[0].double()
    theirs = llama_cpp_olmo2_logits(result.path, ids)
    assert ours.abs().max() > 1.0
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_a_tied_olmo2_model_repeats_the_embedding_as_output(tmp_path):
    found, _ = _olmo2(tmp_path, "model.weight_tying=true")
    result = write_gguf(found, load_tokenizer(found), tmp_path / "m.gguf", file_type="q4_0")
    assert result.tensor_types["output.weight"] == "q8_0"
    assert result.tensor_types["blk.0.attn_q_norm.weight"] == "f32"
    tensors = {t.name: t for t in gguf.GGUFReader(str(result.path)).tensors}
    assert "output.weight" in tensors and "token_embd.weight" in tensors


def test_olmo2_models_llama_cpp_cannot_run_are_refused(tmp_path):
    found, _ = _olmo2(tmp_path, "model.clip_qkv=8")
    with pytest.raises(UsageError, match="olmo2 architecture cannot express this model: clip_qkv"):
        write_gguf(found, load_tokenizer(found), tmp_path / "m.gguf", file_type="f16")


def test_pre_tokenizer_names_follow_the_split_regex():
    import json

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    cl100k = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CL100K_SPLIT}, "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
        ],
    }
    assert pre_tokenizer_name(json.dumps({"pre_tokenizer": byte_level})) == "olmo"
    assert pre_tokenizer_name(json.dumps({"pre_tokenizer": cl100k})) == "dbrx"
    cl100k["pretokenizers"][0]["pattern"]["Regex"] = r"\s+"
    with pytest.raises(UsageError, match="pre-tokenizer"):
        pre_tokenizer_name(json.dumps({"pre_tokenizer": cl100k}))
