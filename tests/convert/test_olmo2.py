"""`convert-hf` for OLMo 2, against transformers' Olmo2ForCausalLM: the export loads with no missing or
unexpected weights and gives our logits (fp32, 1e-5), with and without GQA; a directory written by
transformers' own `save_pretrained` imports with its logits; native -> HF -> native is bit-identical;
and the imported checkpoint is one `generate` and `eval` take."""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # the dev extra installs it: a missing reference fails, never skips

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.convert.export import export_hf
from olmo_cli.convert.import_hf import read_hf, write_native
from olmo_cli.load.build import load_model, load_tokenizer
from olmo_cli.load.read import read_checkpoint
from tests._fixtures import write_checkpoint

from ._helpers import olmo2_model, transformers_log

CASES = [pytest.param([], id="mha"), pytest.param(["model.n_kv_heads=2"], id="gqa")]


def _export(tmp_path, overrides, **kwargs):
    cfg, model = olmo2_model(*overrides)
    native_dir, model = write_checkpoint(tmp_path, cfg, model=model)
    found = read_checkpoint(native_dir)
    return cfg, model, native_dir, export_hf(found, load_tokenizer(found), tmp_path / "hf", **kwargs)


@pytest.mark.parametrize("overrides", CASES)
def test_transformers_loads_the_olmo2_export_with_our_logits(tmp_path, overrides) -> None:
    cfg, model, _, result = _export(tmp_path, overrides, max_shard_bytes=200_000)
    written = json.loads((result.path / "config.json").read_text())
    assert (written["model_type"], written["architectures"]) == ("olmo2", ["Olmo2ForCausalLM"])
    assert written["rms_norm_eps"] == 1e-6 and written["rope_theta"] == 500000.0 and "clip_qkv" not in written
    assert written["num_key_value_heads"] == cfg.model.effective_n_kv_heads
    with transformers_log() as log:
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(result.path, output_loading_info=True)
    assert log.getvalue() == ""
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == "Olmo2ForCausalLM"
    hf.eval()
    ids = torch.randint(2, cfg.model.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.abs().max() > 1.0
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("overrides", CASES)
def test_olmo2_native_to_hf_to_native_is_bit_identical(tmp_path, overrides) -> None:
    cfg, _, native_dir, _ = _export(tmp_path, overrides, max_shard_bytes=250_000)
    back = write_native(read_hf(tmp_path / "hf"), tmp_path / "back" / "step0-unsharded")
    original, restored = read_unsharded(native_dir), read_unsharded(back)
    assert list(restored.model) == list(original.model)
    for key, value in original.model.items():
        assert torch.equal(restored.model[key], value), key
    model = read_checkpoint(back).config.model
    for name in ("norm_after", "layer_norm_type", "layer_norm_with_affine", "layer_norm_eps"):
        assert getattr(model, name) == getattr(cfg.model, name), name
    for name in (
        "attention_layer_norm",
        "attention_layer_norm_with_affine",
        "rope_theta",
        "effective_n_kv_heads",
    ):
        assert getattr(model, name) == getattr(cfg.model, name), name


def test_transformers_olmo2_save_pretrained_imports_with_equal_logits(tmp_path) -> None:
    hf_cfg = transformers.Olmo2Config(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        pad_token_id=1,
        eos_token_id=0,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    hf = transformers.Olmo2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "hf")
    native = write_native(read_hf(tmp_path / "hf"), tmp_path / "native")
    found = read_checkpoint(native)
    assert found.config.model.layer_norm_eps == 1e-5 and found.config.model.effective_n_kv_heads == 2
    model = load_model(found)
    ids = torch.randint(0, 96, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5
    # and the HF directory itself is a checkpoint the commands take, with the same numbers
    with torch.no_grad():
        assert torch.equal(load_model(read_checkpoint(tmp_path / "hf"))(ids), model(ids))


def test_an_olmo2_model_olmo2_cannot_express_is_refused(tmp_path) -> None:
    from olmo_cli.convert.hf import hf_config_dict

    cfg, _ = olmo2_model("model.clip_qkv=8")
    with pytest.raises(ValueError, match="Olmo2ForCausalLM: clip_qkv must be unset"):
        hf_config_dict(cfg.model)
