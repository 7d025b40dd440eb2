"""The restricted unpicklers: plain data comes out, nothing else runs."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from olmo_cli.checkpoint.safe_pickle import check_plain, restricted_loads
from olmo_cli.errors import CheckpointError

PLAIN = {
    "lr": 4e-4,
    "betas": (0.9, 0.95),
    "params": [0, 1, "transformer.wte.weight"],
    "foreach": None,
    "fused": False,
    "big": 2**80,
    "raw": b"\x00\x01",
    "nested": {1: [{"x": ()}]},
    "tags": {"a", "b"},
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_of_every_protocol_loads(protocol: int) -> None:
    assert restricted_loads(pickle.dumps(PLAIN, protocol=protocol), what="x") == PLAIN


class _Touch:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.sentinel,))


def test_any_global_is_refused_without_being_imported_or_called(tmp_path: Path) -> None:
    sentinel = tmp_path / "touched"
    data = pickle.dumps([1, _Touch(sentinel)])
    with pytest.raises(CheckpointError, match=r"asks for pathlib\.Path\.touch; refused") as caught:
        restricted_loads(data, what="param_groups")
    assert "param_groups" in str(caught.value)
    assert not sentinel.exists()


def test_a_class_instance_is_refused() -> None:
    with pytest.raises(CheckpointError, match="refused"):
        restricted_loads(pickle.dumps(Path("/x")), what="value")


def test_malformed_pickles_are_checkpoint_errors() -> None:
    good = pickle.dumps(PLAIN)
    for bad in (good[:-5], b"\x80\x04garbage", b""):
        with pytest.raises(CheckpointError, match="not a valid pickle"):
            restricted_loads(bad, what="value")


def test_check_plain_names_the_offending_place() -> None:
    check_plain(PLAIN, "groups")
    with pytest.raises(TypeError, match=r"groups\[0\]\['lr'\] is a PosixPath"):
        check_plain([{"lr": Path("/x")}], "groups")


def test_bytes_constructor_admits_latin1_only() -> None:
    assert restricted_loads(b"c_codecs\nencode\n(Vab\nVlatin1\ntR.", what="value") == b"ab"
    with pytest.raises(CheckpointError, match="encoding 'rot13'"):
        restricted_loads(b"c_codecs\nencode\n(Vab\nVrot13\ntR.", what="value")
