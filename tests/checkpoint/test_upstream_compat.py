"""Checkpoints built the way upstream OLMo writes them load, through weights_only-safe loading only."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pytest
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.errors import CheckpointError
from olmo_cli.model.olmo import build_model

from ._upstream import (
    TINY,
    TINY_CONFIG_YAML,
    adamw_entry,
    adamw_param_group,
    tiny_model_state,
    write_upstream_safetensors,
)

FSDP = "_fsdp_wrapped_module."


def upstream_dir(root: Path, name: str = "step20-unsharded") -> Path:
    directory = root / name
    directory.mkdir()
    (directory / "config.yaml").write_text(TINY_CONFIG_YAML)
    return directory


def fsdp_name(key: str) -> str:
    """How FSDP1 wrapping (root + each block) decorated upstream's parameter names."""
    key = FSDP + key
    return key.replace("blocks.0.", f"blocks.0.{FSDP}").replace("blocks.1.", f"blocks.1.{FSDP}")


def upstream_train_state() -> dict[str, Any]:
    rng = np.random.RandomState(1234)
    return {
        "epoch": 0,
        "global_step": 20,
        "global_train_examples_seen_this_epoch": 80,
        "global_train_tokens_seen": 2560,
        "world_size": 1,
        "checkpoints": [Path("/runs/tiny/step10"), Path("/runs/tiny/step20")],
        "unsharded_checkpoints": [Path("/runs/tiny/step20-unsharded")],
        "ephemeral_checkpoints": [],
        "rng": {
            "python": random.Random(7).getstate(),
            "numpy": rng.get_state(),
            "torch": torch.Generator().manual_seed(3).get_state(),
            "cuda": torch.Generator().manual_seed(4).get_state(),
        },
    }


def rewrite_pickle(path: Path, replacements: dict[bytes, bytes]) -> None:
    """Edits the GLOBAL names inside a torch.save zip, as a file from another writer would have them."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries:
            if name.endswith("data.pkl"):
                for old, new in replacements.items():
                    assert old in data
                    data = data.replace(old, new)
            dst.writestr(name, data)
    path.write_bytes(out.getvalue())


def assert_loads_into_the_model(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    model = build_model(TINY)
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_model_pt_with_fsdp_wrapper_names(tmp_path: Path) -> None:
    weights = tiny_model_state()
    directory = upstream_dir(tmp_path)
    torch.save({fsdp_name(k): v for k, v in weights.items()}, directory / "model.pt")
    ckpt = read_unsharded(directory, model_config=TINY)
    assert sorted(ckpt.model) == sorted(weights)
    assert_loads_into_the_model(ckpt.model, weights)


@pytest.mark.parametrize("protocol", [2, 4])
def test_model_safetensors_with_encoded_names(tmp_path: Path, protocol: int) -> None:
    weights = tiny_model_state(seed=1)
    directory = upstream_dir(tmp_path)
    write_upstream_safetensors(directory / "model.safetensors", weights, protocol)
    torch.save({k: torch.zeros_like(v) for k, v in weights.items()}, directory / "model.pt")  # not read
    ckpt = read_unsharded(directory, model_config=TINY)
    assert_loads_into_the_model(ckpt.model, weights)


def two_groups(params: list[Any], names: list[str], split: int) -> list[dict[str, Any]]:
    """Upstream's decay / no-decay groups: the first `split` parameters decay."""
    return [
        adamw_param_group(params[:split], names[:split], weight_decay=0.1),
        adamw_param_group(params[split:], names[split:], weight_decay=0.0),
    ]


def test_optim_safetensors_keyed_by_fsdp_names(tmp_path: Path) -> None:
    weights = tiny_model_state()
    names = sorted(weights)
    wrapped = [fsdp_name(k) for k in names]
    directory = upstream_dir(tmp_path)
    write_upstream_safetensors(directory / "model.safetensors", weights)
    optim = {
        "state": {fsdp_name(k): adamw_entry(weights[k], 20.0) for k in names},
        "param_groups": two_groups(wrapped, wrapped, 3),
    }
    write_upstream_safetensors(directory / "optim.safetensors", optim)
    ckpt = read_unsharded(directory)
    assert ckpt.optim is not None
    assert sorted(ckpt.optim["state"]) == names
    groups = ckpt.optim["param_groups"]
    assert groups[0]["params"] == names[:3] and groups[1]["params"] == names[3:]
    assert groups[0]["param_names"] == names[:3]
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["betas"] == (0.9, 0.95)
    entry = ckpt.optim["state"]["transformer.wte.weight"]
    assert entry["step"].shape == () and float(entry["step"]) == 20.0
    assert torch.equal(entry["exp_avg"], torch.full_like(weights["transformer.wte.weight"], 0.25))


def test_optim_pt_keyed_by_integer_ids(tmp_path: Path) -> None:
    weights = tiny_model_state()
    names = list(weights)
    directory = upstream_dir(tmp_path)
    torch.save(weights, directory / "model.pt")
    ids = list(range(len(names)))
    optim = {
        "state": {i: adamw_entry(weights[names[i]], 5.0) for i in ids[:-1]},  # last param never stepped
        "param_groups": two_groups(ids, [fsdp_name(n) for n in names], 3),
    }
    torch.save(optim, directory / "optim.pt")
    ckpt = read_unsharded(directory)
    assert ckpt.optim is not None
    assert sorted(ckpt.optim["state"]) == sorted(names[:-1])
    assert [p for g in ckpt.optim["param_groups"] for p in g["params"]] == names
    for name in names[:-1]:
        assert ckpt.optim["state"][name]["exp_avg"].shape == weights[name].shape


def test_train_pt_with_paths_and_rng_states(tmp_path: Path) -> None:
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    saved = upstream_train_state()
    torch.save(saved, directory / "train.pt")
    ckpt = read_unsharded(directory)
    assert ckpt.warnings == [f"{directory} has no optimizer state (optim.safetensors / optim.pt)"]
    trainer = ckpt.trainer
    assert trainer is not None and ckpt.step == 20
    assert trainer["checkpoints"] == saved["checkpoints"]
    assert all(isinstance(p, Path) for p in trainer["checkpoints"])
    kind, key, pos, has_gauss, cached = trainer["rng"]["numpy"]
    assert (kind, pos, has_gauss, cached) == saved["rng"]["numpy"][:1] + saved["rng"]["numpy"][2:]
    assert key.dtype == np.uint32 and key.shape == (624,) and np.array_equal(key, saved["rng"]["numpy"][1])
    restored = np.random.RandomState()
    restored.set_state(trainer["rng"]["numpy"])
    assert restored.randint(0, 2**31, 5).tolist() == np.random.RandomState(1234).randint(0, 2**31, 5).tolist()
    assert trainer["rng"]["python"] == saved["rng"]["python"]
    assert torch.equal(trainer["rng"]["torch"], saved["rng"]["torch"])
    assert trainer["rng"]["torch"].dtype == torch.uint8


def test_train_pt_from_a_machine_without_cuda(tmp_path: Path) -> None:
    # Upstream writes the generators it has and None for the others ("cuda": None, "mps": None on a CPU).
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    saved = upstream_train_state()
    saved["rng"]["cuda"], saved["rng"]["mps"] = None, None
    torch.save(saved, directory / "train.pt")
    trainer = read_unsharded(directory).trainer
    assert trainer is not None and trainer["rng"]["cuda"] is None
    from olmo_cli.train.state import restore_rng

    restore_rng(trainer["rng"])  # the CUDA generator, if any, is left alone
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])


def test_train_pt_from_numpy_1_and_from_windows(tmp_path: Path) -> None:
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    saved = upstream_train_state()
    saved["checkpoints"] = [PurePosixPath("/runs/step10")]
    torch.save(saved, directory / "train.pt")
    rewrite_pickle(
        directory / "train.pt",
        {b"numpy._core.multiarray\n": b"numpy.core.multiarray\n", b"PurePosixPath\n": b"WindowsPath\n"},
    )
    trainer = read_unsharded(directory).trainer
    assert trainer is not None
    assert np.array_equal(trainer["rng"]["numpy"][1], saved["rng"]["numpy"][1])
    assert trainer["checkpoints"] == [PureWindowsPath("/runs/step10")]


def test_other_pt_is_the_fallback_for_train_pt(tmp_path: Path) -> None:
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    torch.save({"global_step": 7}, directory / "other.pt")
    trainer = read_unsharded(directory).trainer
    assert trainer is not None and trainer["global_step"] == 7
    # Old counters derived from global_train_batch_size 4 and max_sequence_length 32 in config.yaml.
    assert trainer["global_train_examples_seen_this_epoch"] == 28
    assert trainer["global_train_tokens_seen"] == 28 * 32
    assert trainer["epoch"] == 0


def touch(path: str) -> None:
    Path(path).touch()


class _Spawn:
    """Pickles to a call of this module's `touch`: a global that is on no allow-list or blocklist."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (touch, (str(self.sentinel),))


class _System:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.sentinel}",))


def test_disallowed_object_in_train_pt_is_skipped_with_a_warning(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    saved = upstream_train_state()
    saved["rng"]["extra"] = [1, _Spawn(sentinel)]
    saved["callback"] = _Spawn(sentinel)
    torch.save(saved, directory / "train.pt")
    ckpt = read_unsharded(directory)
    assert not sentinel.exists()
    trainer = ckpt.trainer
    assert trainer is not None and "callback" not in trainer and "extra" not in trainer["rng"]
    assert trainer["global_step"] == 20 and np.array_equal(
        trainer["rng"]["numpy"][1], saved["rng"]["numpy"][1]
    )
    skipped = [w for w in ckpt.warnings if "skipped" in w]
    assert len(skipped) == 2 and all(f"{__name__}.touch" in w and "not run" in w for w in skipped)
    assert any("'rng.extra'" in w for w in skipped) and any("'callback'" in w for w in skipped)


def test_train_pt_needing_os_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    directory = upstream_dir(tmp_path)
    torch.save(tiny_model_state(), directory / "model.pt")
    torch.save({"global_step": 1, "hook": _System(sentinel)}, directory / "train.pt")
    with pytest.raises(CheckpointError, match="refused") as caught:
        read_unsharded(directory)
    assert "posix.system" in str(caught.value) or "os.system" in str(caught.value)
    assert not sentinel.exists()
    assert read_unsharded(directory, load_trainer=False).trainer is None


def test_model_pt_needing_more_than_tensors_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    directory = upstream_dir(tmp_path)
    state: dict[str, Any] = dict(tiny_model_state())
    state["transformer.wte.weight"] = _Spawn(sentinel)
    torch.save(state, directory / "model.pt")
    with pytest.raises(CheckpointError, match=f"{__name__}.touch"):
        read_unsharded(directory)
    assert not sentinel.exists()


def test_optimizer_names_get_the_model_key_rewrites() -> None:
    from olmo_cli.checkpoint.optim_state import normalize_optim_state

    w = torch.ones(2)
    grouped = "transformer.block_groups.1.0.att_proj.weight"  # group size 2 (two blocks in group 0)
    names = [
        "transformer.block_groups.0.0.attn_out.weight",
        "transformer.block_groups.0.1.attn_out.weight",
        grouped,
        FSDP + "transformer.blocks.4.norm.weight",  # legacy shared norm: becomes attn_norm and ff_norm
    ]
    raw = {"state": {n: adamw_entry(w, 1.0) for n in names}, "param_groups": [{"params": names}]}
    optim, warnings = normalize_optim_state(raw, source="optim.pt")
    assert warnings == []
    expected = [
        "transformer.blocks.0.attn_out.weight",
        "transformer.blocks.1.attn_out.weight",
        "transformer.blocks.2.att_proj.weight",
        "transformer.blocks.4.attn_norm.weight",
        "transformer.blocks.4.ff_norm.weight",
    ]
    assert optim["param_groups"][0]["params"] == expected
    assert sorted(optim["state"]) == expected
    attn, ff = optim["state"][expected[3]], optim["state"][expected[4]]
    assert torch.equal(attn["exp_avg"], ff["exp_avg"]) and attn["exp_avg"] is not ff["exp_avg"]


def test_integer_ids_without_names_are_kept_with_a_warning() -> None:
    from olmo_cli.checkpoint.optim_state import normalize_optim_state

    raw = {"state": {0: adamw_entry(torch.ones(2), 1.0)}, "param_groups": [{"lr": 1.0, "params": [0]}]}
    optim, warnings = normalize_optim_state(raw, source="optim.pt")
    assert list(optim["state"]) == [0] and "left as ids" in warnings[0]
    with pytest.raises(CheckpointError, match="not an optimizer state dict"):
        normalize_optim_state({"state": {}}, source="optim.pt")
