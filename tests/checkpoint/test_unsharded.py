"""write_unsharded / read_unsharded: round trips, atomic placement, and the errors a user can meet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import olmo_cli.checkpoint.unsharded as unsharded
from olmo_cli.checkpoint.unsharded import read_unsharded, write_unsharded
from olmo_cli.errors import CheckpointError
from olmo_cli.model.olmo import build_model

from ._upstream import TINY, TINY_CONFIG_YAML, tiny_model_state


def trained_tiny() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Model and AdamW state after two real optimizer steps, the optimizer built on named parameters."""
    model = build_model(TINY, seed=0)
    optimizer = torch.optim.AdamW(model.named_parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-5)
    tokens = torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(tokens).float().logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.state_dict(), optimizer.state_dict()


def trainer_state(step: int = 2) -> dict[str, Any]:
    return {
        "epoch": 0,
        "global_step": step,
        "global_train_examples_seen_this_epoch": 4 * step,
        "global_train_tokens_seen": 4 * 32 * step,
        "world_size": 1,
        "checkpoints": [],
        "unsharded_checkpoints": [Path("run/step2-unsharded")],
        "ephemeral_checkpoints": [],
        "rng": {"numpy": np.random.RandomState(0).get_state(), "torch": torch.get_rng_state()},
    }


def assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[want.element_size()]
    assert torch.equal(got.view(bits), want.view(bits))  # bit-identical, NaN payloads and -0.0 included


@pytest.mark.parametrize("use_safetensors", [True, False])
def test_round_trip_is_bit_identical_and_loads_strictly(tmp_path: Path, use_safetensors: bool) -> None:
    model_state, optim_state = trained_tiny()
    target = tmp_path / "step2-unsharded"
    written = write_unsharded(
        target, model_state, optim_state, trainer_state(), TINY_CONFIG_YAML, safetensors=use_safetensors
    )
    assert written == target
    suffix = ".safetensors" if use_safetensors else ".pt"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["config.yaml", f"model{suffix}", f"optim{suffix}", "train.pt"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["step2-unsharded"]  # no -tmp left behind

    ckpt = read_unsharded(target, model_config=TINY)
    assert ckpt.warnings == [] and ckpt.step == 2
    assert ckpt.config_text == TINY_CONFIG_YAML and ckpt.config is not None
    assert ckpt.config["model"]["d_model"] == 16
    assert sorted(ckpt.model) == sorted(model_state)
    for key, value in model_state.items():
        assert_identical(ckpt.model[key], value)
    model = build_model(TINY)
    model.load_state_dict(ckpt.model, strict=True)

    assert ckpt.optim is not None
    names = optim_state["param_groups"][0]["param_names"]
    assert sorted(ckpt.optim["state"]) == sorted(names)  # integer ids became parameter names
    for index, name in enumerate(names):
        for field, value in optim_state["state"][index].items():
            assert_identical(ckpt.optim["state"][name][field], value)
    group = ckpt.optim["param_groups"][0]
    assert group["params"] == names and group["betas"] == (0.9, 0.95) and group["eps"] == 1e-5

    assert ckpt.trainer is not None
    assert ckpt.trainer["unsharded_checkpoints"] == [Path("run/step2-unsharded")]
    assert np.array_equal(ckpt.trainer["rng"]["numpy"][1], np.random.RandomState(0).get_state()[1])


def test_optional_parts_can_be_left_out(tmp_path: Path) -> None:
    target = write_unsharded(tmp_path / "step0-unsharded", tiny_model_state(), None, None, TINY_CONFIG_YAML)
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "model.safetensors"]
    ckpt = read_unsharded(target)
    assert ckpt.optim is None and ckpt.trainer is None and ckpt.step == 0
    assert len(ckpt.warnings) == 2
    quiet = read_unsharded(target, load_optim=False, load_trainer=False)
    assert quiet.warnings == []


def test_an_existing_checkpoint_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "step5-unsharded"
    first, second = tiny_model_state(seed=1), tiny_model_state(seed=2)
    write_unsharded(target, first, None, None, TINY_CONFIG_YAML)
    with pytest.raises(CheckpointError, match="already exists"):
        write_unsharded(target, second, None, None, TINY_CONFIG_YAML)
    assert torch.equal(
        read_unsharded(target).model["transformer.wte.weight"], first["transformer.wte.weight"]
    )
    write_unsharded(target, second, None, None, TINY_CONFIG_YAML, safetensors=False, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "model.pt"]
    assert torch.equal(
        read_unsharded(target).model["transformer.wte.weight"], second["transformer.wte.weight"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["step5-unsharded"]


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "step3-unsharded"
    (tmp_path / "step3-unsharded-tmp").mkdir()  # left by a crashed run
    (tmp_path / "step3-unsharded-tmp" / "model.safetensors").write_bytes(b"partial")

    def fail(path: Path, nested: Any) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(unsharded, "save_olmo_safetensors", fail)
    with pytest.raises(CheckpointError, match="no space left on the device while writing .*step3-unsharded"):
        write_unsharded(target, tiny_model_state(), None, None, TINY_CONFIG_YAML)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_trainer_state_is_refused_before_writing(tmp_path: Path) -> None:
    state = trainer_state()
    state["sampler"] = object()
    with pytest.raises(TypeError, match="train.pt may not contain"):
        write_unsharded(tmp_path / "step2-unsharded", tiny_model_state(), None, state, TINY_CONFIG_YAML)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_and_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_unsharded(tmp_path / "step9-unsharded")
    empty = tmp_path / "step9-unsharded"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.pt"):
        read_unsharded(empty)
    sharded = tmp_path / "step9"
    sharded.mkdir()
    (sharded / "rank0.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        read_unsharded(sharded)
    assert "sharded" in (caught.value.hint or "")


def test_a_model_that_does_not_fit_the_config_names_the_keys(tmp_path: Path) -> None:
    state = tiny_model_state()
    state["transformer.blocks.1.att_proj.weight"] = torch.zeros(40, 16)
    del state["transformer.ff_out.weight"]
    state["transformer.blocks.2.attn_out.weight"] = torch.zeros(16, 16)
    target = write_unsharded(tmp_path / "step1-unsharded", state, None, None, TINY_CONFIG_YAML)
    with pytest.raises(CheckpointError, match="does not fit the model config") as caught:
        read_unsharded(target, model_config=TINY)
    text = str(caught.value)
    assert "transformer.ff_out.weight [64, 16]" in text
    assert "transformer.blocks.2.attn_out.weight [16, 16]" in text
    assert "transformer.blocks.1.att_proj.weight: checkpoint [40, 16], model [48, 16]" in text
    assert "1 missing, 1 unexpected, 1 with another shape" in text


def test_truncated_or_corrupt_model_files(tmp_path: Path) -> None:
    target = write_unsharded(tmp_path / "a-unsharded", tiny_model_state(), None, None, TINY_CONFIG_YAML)
    model_file = target / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_unsharded(target)
    other = write_unsharded(
        tmp_path / "b-unsharded", tiny_model_state(), None, None, TINY_CONFIG_YAML, safetensors=False
    )
    pt = other / "model.pt"
    pt.write_bytes(pt.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_unsharded(other)


def test_a_damaged_config_yaml_is_a_checkpoint_error(tmp_path: Path) -> None:
    target = write_unsharded(tmp_path / "s-unsharded", tiny_model_state(), None, None, "model: [unclosed")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        read_unsharded(target)


def test_half_precision_weights_are_upcast_with_a_warning(tmp_path: Path) -> None:
    state = {k: v.to(torch.bfloat16) for k, v in tiny_model_state().items()}
    target = write_unsharded(tmp_path / "s-unsharded", state, None, None, TINY_CONFIG_YAML)
    ckpt = read_unsharded(target, load_optim=False, load_trainer=False)
    assert all(v.dtype == torch.float32 for v in ckpt.model.values())
    assert torch.equal(ckpt.model["transformer.wte.weight"], state["transformer.wte.weight"].float())
    assert ckpt.warnings == [
        f"{target / 'model.safetensors'}: weights stored as torch.bfloat16 were upcast to float32"
    ]


def test_a_corrupt_train_pt_is_a_checkpoint_error(tmp_path: Path) -> None:
    target = write_unsharded(
        tmp_path / "s-unsharded", tiny_model_state(), None, trainer_state(), TINY_CONFIG_YAML
    )
    (target / "train.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_unsharded(target)
    assert read_unsharded(target, load_trainer=False).model
