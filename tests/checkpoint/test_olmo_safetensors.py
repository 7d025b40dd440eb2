"""The OLMo safetensors key/value codec (docs/format.md §4.5)."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from olmo_cli.checkpoint.olmo_safetensors import (
    decode_key,
    decode_state,
    encode_key,
    encode_state,
    load_olmo_safetensors,
    save_olmo_safetensors,
)
from olmo_cli.errors import CheckpointError

from ._upstream import adamw_entry, adamw_param_group, upstream_flatten, upstream_key

REFERENCE_KEY = "gASVHwAAAAAAAACMFnRyYW5zZm9ybWVyLnd0ZS53ZWlnaHSUhZSJhpQu"


def test_key_matches_the_reference_example() -> None:
    assert encode_key(("transformer.wte.weight",), False) == REFERENCE_KEY
    assert decode_key(REFERENCE_KEY) == (("transformer.wte.weight",), False)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_keys_of_every_pickle_protocol_decode(protocol: int) -> None:
    for path, pickled in [(("transformer.wte.weight",), False), (("state", 3, "exp_avg"), False)]:
        key = upstream_key(path, pickled, protocol)
        assert decode_key(key) == (path, pickled)
    flat = upstream_flatten({"param_groups": [{"lr": 1e-3, "params": [0]}], "w": torch.ones(2)}, protocol)
    decoded = decode_state(flat)
    assert decoded["param_groups"] == [{"lr": 1e-3, "params": [0]}]
    assert torch.equal(decoded["w"], torch.ones(2))


def test_optimizer_shaped_state_round_trips_through_a_file(tmp_path: Path) -> None:
    w = torch.randn(4, 3)
    optim = {
        "state": {0: adamw_entry(w, 7.0), "transformer.wte.weight": adamw_entry(w, 3.0)},
        "param_groups": [adamw_param_group([0, "transformer.wte.weight"], ["a", "transformer.wte.weight"])],
    }
    save_olmo_safetensors(tmp_path / "optim.safetensors", optim)
    back = load_olmo_safetensors(tmp_path / "optim.safetensors")
    assert back["param_groups"] == optim["param_groups"]
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)  # tuples stay tuples
    assert set(back["state"]) == {0, "transformer.wte.weight"}
    for key, entry in optim["state"].items():
        for name, tensor in entry.items():
            got = back["state"][key][name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor)
    assert back["state"][0]["step"].dim() == 0


def test_our_file_is_what_upstream_writes(tmp_path: Path) -> None:
    nested = {"state": {"w": {"exp_avg": torch.arange(3.0)}}, "param_groups": [{"lr": 0.5, "params": ["w"]}]}
    ours = encode_state(nested)
    theirs = upstream_flatten(nested)
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_empty_dicts_survive_the_round_trip() -> None:
    decoded = decode_state(encode_state({"state": {}, "param_groups": []}))
    assert decoded == {"state": {}, "param_groups": []}


def test_views_and_shared_storage_are_written_as_their_own_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    nested = {"a": base, "b": base[1], "c": base.t()}
    save_olmo_safetensors(tmp_path / "x.safetensors", nested)
    back = load_olmo_safetensors(tmp_path / "x.safetensors")
    assert torch.equal(back["b"], base[1]) and torch.equal(back["c"], base.t())


def test_unencodable_values_are_refused_at_write_time() -> None:
    with pytest.raises(TypeError, match="Path"):
        encode_state({"x": Path("/tmp")})
    with pytest.raises(TypeError, match="keys"):
        encode_state({(1, 2): torch.ones(1)})


class _Exploit:
    """Pickles to a call of os.system that would create the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.sentinel}",))


class _ImportExploit:
    """Pickles to an import; had it run, the missing module would raise ModuleNotFoundError."""

    def __reduce__(self) -> tuple[Any, ...]:
        import importlib

        return (importlib.import_module, ("olmo_test_module_that_does_not_exist",))


def test_malicious_key_is_refused_and_not_run(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    key = base64.urlsafe_b64encode(pickle.dumps(((_Exploit(sentinel),), False))).decode()
    with pytest.raises(CheckpointError, match="refused") as caught:
        decode_state({key: torch.ones(1)})
    assert "system" in str(caught.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("exploit", ["system", "import"])
def test_malicious_value_is_refused_and_not_run(tmp_path: Path, exploit: str) -> None:
    sentinel = tmp_path / "pwned"
    payload = _Exploit(sentinel) if exploit == "system" else _ImportExploit()
    data = bytearray(pickle.dumps({"lr": payload}))
    flat = {upstream_key(("param_groups",), True): torch.frombuffer(data, dtype=torch.uint8)}
    safetensors.torch.save_file(flat, str(tmp_path / "optim.safetensors"))
    with pytest.raises(CheckpointError, match="refused"):
        load_olmo_safetensors(tmp_path / "optim.safetensors")
    assert not sentinel.exists()


def test_plain_names_and_conflicting_paths_are_errors() -> None:
    with pytest.raises(CheckpointError, match="not an OLMo-encoded name") as caught:
        decode_state({"transformer.wte.weight": torch.ones(1)})
    assert "convert-hf" in (caught.value.hint or "")
    not_a_key_tuple = base64.urlsafe_b64encode(pickle.dumps("just a string")).decode()
    with pytest.raises(CheckpointError, match="not \\(key path tuple"):
        decode_state({not_a_key_tuple: torch.ones(1)})
    clash = {upstream_key(("a",), False): torch.ones(1), upstream_key(("a", "b"), False): torch.ones(1)}
    with pytest.raises(CheckpointError, match="both a value and a dict"):
        decode_state(clash)
    twice = {upstream_key(("a",), False, 2): torch.ones(1), upstream_key(("a",), False, 4): torch.ones(1)}
    with pytest.raises(CheckpointError, match="occurs twice"):
        decode_state(twice)


def test_truncated_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_olmo_safetensors(path, {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_olmo_safetensors(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_olmo_safetensors(path)


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_olmo_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
