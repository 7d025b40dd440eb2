"""The one dispatcher: every kind read through `read_checkpoint`, configs without weights, one refusal."""

from __future__ import annotations

import shutil

import pytest
import torch

from olmo_cli.checkpoint.kind import locate_checkpoint
from olmo_cli.convert.export import export_hf
from olmo_cli.errors import CheckpointError
from olmo_cli.load.build import load_tokenizer
from olmo_cli.load.read import read_checkpoint, read_checkpoint_config, refuse_kinds
from tests._fixtures import write_checkpoint
from tests.convert._helpers import tiny_train_config


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    cfg = tiny_train_config()
    path, model = write_checkpoint(root / "run", cfg)
    return path, cfg, {k: v.detach() for k, v in model.state_dict().items()}


def test_every_kind_reads_to_the_same_weights(native, tmp_path):
    path, cfg, state = native
    found = read_checkpoint(path.parent)  # a run folder: its latest checkpoint
    assert (found.path, found.kind) == (path, "unsharded") and found.config.model == cfg.model
    assert found.state.keys() == state.keys() and all(torch.equal(found.state[k], state[k]) for k in state)
    hf = tmp_path / "hf"
    export_hf(found, load_tokenizer(found), hf)
    from_hf = read_checkpoint(hf)
    assert from_hf.kind == "hf" and from_hf.tokenizer_file == hf / "tokenizer.json"
    assert all(torch.equal(from_hf.state[k], state[k]) for k in state)


def test_config_without_weights(native, tmp_path, monkeypatch):
    path, cfg, _ = native
    import olmo_cli.checkpoint.unsharded as unsharded

    def no_weights(*args, **kwargs):
        raise AssertionError("read_checkpoint_config read the weights")

    monkeypatch.setattr(unsharded, "read_unsharded", no_weights)
    found = read_checkpoint_config(path.parent)
    assert (found.path, found.kind, found.config.model) == (path, "unsharded", cfg.model)


def test_a_broken_config_is_the_checkpoint_s_fault(native, tmp_path):
    path, _, _ = native
    broken = tmp_path / "run" / "step3-unsharded"
    shutil.copytree(path, broken)
    (broken / "config.yaml").write_text("model: {d_model: many}\n")
    with pytest.raises(CheckpointError, match="invalid setting") as info:
        read_checkpoint_config(broken)
    assert info.value.exit_code == 4


def test_one_refusal_for_kinds_a_command_cannot_use(tmp_path):
    quantized = tmp_path / "q"
    quantized.mkdir()
    (quantized / "quantization.json").write_text("{}")
    with pytest.raises(CheckpointError, match="quantized checkpoint.*olmo finetune needs full-precision"):
        refuse_kinds(locate_checkpoint(quantized), "olmo finetune")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="LoRA adapter") as info:
        refuse_kinds(locate_checkpoint(adapter), "olmo resume")
    assert "olmo finetune merge" in info.value.hint
    with pytest.raises(CheckpointError, match="LoRA adapter"):
        read_checkpoint_config(adapter)
