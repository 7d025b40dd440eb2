"""`convert-hf --from-hf`: transformers Olmo directories -> the native layout. The round trip native -> HF
-> native is bit-identical; a directory written by transformers' own `save_pretrained` gives our model
the same logits; other architectures are refused with a clear error."""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # the dev extra installs it: a missing reference fails, never skips

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.convert.export import export_hf
from olmo_cli.convert.import_hf import read_hf, write_native
from olmo_cli.errors import CheckpointError, UsageError
from olmo_cli.load.build import load_model, load_tokenizer
from olmo_cli.load.read import read_checkpoint
from tests._fixtures import write_checkpoint

from ._helpers import tiny_train_config

ARCH_FIELDS = (
    "d_model",
    "n_heads",
    "effective_n_kv_heads",
    "n_layers",
    "mlp_hidden",
    "clip_qkv",
    "rope",
    "rope_theta",
    "weight_tying",
    "vocab_size",
    "padded_vocab_size",
    "max_sequence_length",
    "eos_token_id",
    "pad_token_id",
    "include_bias",
    "layer_norm_with_affine",
    "activation_type",
    "attention_dropout",
    "residual_dropout",
)


@pytest.mark.parametrize(
    "overrides",
    [["model.weight_tying=true"], ["model.weight_tying=false", "model.clip_qkv=0.5", "model.n_kv_heads=2"]],
    ids=["tied", "untied-clip-gqa"],
)
def test_native_to_hf_to_native_is_bit_identical(tmp_path, overrides) -> None:
    cfg = tiny_train_config(*overrides)
    native_dir, _ = write_checkpoint(tmp_path, cfg)
    found = read_checkpoint(native_dir)
    export_hf(found, load_tokenizer(found), tmp_path / "hf", max_shard_bytes=250_000)
    back = write_native(read_hf(tmp_path / "hf"), tmp_path / "back" / "step0-unsharded")
    original, restored = read_unsharded(native_dir), read_unsharded(back)
    assert list(restored.model) == list(original.model)
    for key, value in original.model.items():
        assert restored.model[key].dtype == value.dtype and torch.equal(restored.model[key], value), key
    restored_cfg = read_checkpoint(back).config
    for name in ARCH_FIELDS:
        assert getattr(restored_cfg.model, name) == getattr(cfg.model, name), name
    assert restored_cfg.tokenizer.identifier == cfg.tokenizer.identifier  # builtin:tiny-bpe-4096 recognised


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_save_pretrained_imports_with_equal_logits(tmp_path, tied) -> None:
    hf_cfg = transformers.OlmoConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        clip_qkv=0.7,
        tie_word_embeddings=tied,
        pad_token_id=1,
        eos_token_id=0,
        rope_theta=20000.0,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    hf = transformers.OlmoForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    native = write_native(read_hf(tmp_path / "hf"), tmp_path / "native")
    found = read_checkpoint(native)
    assert found.kind == "unsharded" and found.config.model.weight_tying is tied
    model = load_model(found)
    ids = torch.randint(0, 96, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5


def test_hf_directory_loads_directly_for_generate(tmp_path) -> None:
    cfg = tiny_train_config("model.weight_tying=false")
    native_dir, model = write_checkpoint(tmp_path, cfg)
    found = read_checkpoint(native_dir)
    export_hf(found, load_tokenizer(found), tmp_path / "hf")
    hf_found = read_checkpoint(tmp_path / "hf")
    assert hf_found.kind == "hf"
    assert load_tokenizer(hf_found).identity.eos_token_id == cfg.model.eos_token_id
    ids = torch.randint(0, 4096, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_model(hf_found)(ids), model(ids))


def write_config(directory, **fields) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(fields))


@pytest.mark.parametrize(
    ("model_type", "message"),
    [("llama", "not an OLMo ('olmo' or 'olmo2') model"), ("olmoe", "mixture-of-experts"), ("hf_olmo", "-hf")],
)
def test_other_model_types_are_refused(tmp_path, model_type, message) -> None:
    write_config(tmp_path / "m", model_type=model_type, hidden_size=64)
    with pytest.raises(UsageError) as error:
        read_hf(tmp_path / "m")
    assert message in str(error.value)


def test_unsupported_olmo_settings_and_missing_weights(tmp_path) -> None:
    base = dict(
        model_type="olmo",
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=1,
        intermediate_size=64,
        vocab_size=64,
    )
    write_config(tmp_path / "scaled", **base, rope_scaling={"type": "linear", "factor": 2.0})
    with pytest.raises(UsageError, match="scaled RoPE"):
        read_hf(tmp_path / "scaled")
    write_config(tmp_path / "bias", **base, attention_bias=True)
    with pytest.raises(UsageError, match="attention_bias"):
        read_hf(tmp_path / "bias")
    write_config(tmp_path / "empty", **base)
    with pytest.raises(CheckpointError, match="no weights"):
        read_hf(tmp_path / "empty")


def test_sharded_checkpoint_is_unsharded_on_the_way(tmp_path, monkeypatch) -> None:
    from olmo_cli.checkpoint.sharded import write_sharded
    from olmo_cli.config.yamlio import dump_yaml
    from olmo_cli.model.olmo import build_model
    from olmo_cli.world import init_world

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = tiny_train_config("model.weight_tying=false")
    model = build_model(cfg.model, seed=4).eval()
    state = {
        "epoch": 0,
        "global_step": 3,
        "global_train_examples_seen_this_epoch": 0,
        "global_train_tokens_seen": 0,
        "world_size": 1,
    }
    write_sharded(
        tmp_path / "run" / "step3",
        model=model,
        optim=None,
        trainer_state=state,
        config_yaml=dump_yaml(cfg.model_dump(mode="json")),
        world=init_world("cpu"),
    )
    found = read_checkpoint(tmp_path / "run")  # a run folder: its latest checkpoint
    assert found.kind == "sharded" and found.path.name == "step3"
    result = export_hf(found, load_tokenizer(found), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.path).eval()
    ids = torch.randint(0, 4096, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5


def test_pytorch_model_bin_weights_import_like_safetensors(tmp_path) -> None:
    """Older HF directories hold `pytorch_model.bin` (a pickle); it is read through the restricted unpickler
    and gives the same native weights as the safetensors copy of the same model."""
    cfg = tiny_train_config()
    native_dir, _ = write_checkpoint(tmp_path, cfg)
    found = read_checkpoint(native_dir)
    export_hf(found, load_tokenizer(found), tmp_path / "hf", max_shard_bytes=10**12)
    from_safetensors = read_hf(tmp_path / "hf")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.save(weights, tmp_path / "hf" / "pytorch_model.bin")
    from_bin = read_hf(tmp_path / "hf")
    assert list(from_bin.model) == list(from_safetensors.model)
    for key, value in from_safetensors.model.items():
        assert torch.equal(from_bin.model[key], value), key
