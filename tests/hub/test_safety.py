"""Names that come from an index or a server never write outside --dest."""

from __future__ import annotations

from pathlib import Path

import pytest

from olmo_cli.errors import CheckpointError, ConfigError
from olmo_cli.hub.download import MARKER, download, plan_download
from olmo_cli.hub.index import parse_index
from olmo_cli.hub.paths import checkpoint_dirs, safe_child
from tests._http_server import Server

from ._helpers import OPTIONS, add_checkpoint, fetch, files_under


def everything_outside(root: Path, dest: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_relative_to(dest) and p != dest and p not in dest.parents]


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "..\\x", "C:x", "x\0y", " x", "x "]
)
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CheckpointError, match="refusing"):
        safe_child(tmp_path, name)


def test_steps_must_be_plain_integers(tmp_path: Path) -> None:
    for step in (-1, "1/../..", True, 1.5):
        with pytest.raises(CheckpointError):
            checkpoint_dirs(tmp_path, step)  # type: ignore[arg-type]
    assert checkpoint_dirs(tmp_path, 7)[0] == tmp_path / "step7-unsharded"


@pytest.mark.parametrize(
    "row", ["../../evil,http://h/x/", "1/../2,http://h/x/", "-5,http://h/x/", "1e3,http://h/"]
)
def test_an_index_row_with_a_crafted_step_is_rejected(row: str) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        parse_index(f"Step,Checkpoint Directory\n{row}\n", "crafted.csv")


def test_dot_segments_and_redirects_from_the_server_stay_inside_dest(server: Server, tmp_path: Path) -> None:
    files = add_checkpoint(server, 1000)
    # the index points through "..", and the server redirects a file to a "../" location with a
    # Content-Disposition naming a file outside: the local names are upstream's, under --dest
    server.files["evil/model.safetensors"] = server.files["ckpt/step1000-unsharded/model.safetensors"]
    server.redirects["ckpt/step1000-unsharded/model.safetensors"] = "/../../../evil/model.safetensors"
    server.extra_headers["evil/model.safetensors"] = {
        "Content-Disposition": 'attachment; filename="../../x.bin"'
    }
    text = f"Step,Checkpoint Directory\n1000,{server.url('ckpt/../ckpt/./step1000-unsharded/')}\n"
    entry = parse_index(text, "crafted.csv").find(1000)
    dest = tmp_path / "inside" / "dest"
    plans = plan_download([entry], dest, OPTIONS)
    download(plans, OPTIONS)
    assert any(e.path == "evil/model.safetensors" and e.method == "GET" for e in server.log)
    assert everything_outside(tmp_path, dest) == []
    got = files_under(dest / "step1000-unsharded")
    assert got.pop(MARKER) and got == files


def test_a_symlinked_partial_directory_is_refused(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "step1000-unsharded.partial").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="symbolic link"):
        fetch(server, [1000], dest)
    assert list(outside.iterdir()) == []


def test_a_symlinked_file_in_the_partial_directory_is_refused(server: Server, tmp_path: Path) -> None:
    add_checkpoint(server, 1000)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    partial = tmp_path / "dest" / "step1000-unsharded.partial"
    partial.mkdir(parents=True)
    (partial / ".model.safetensors.part").symlink_to(victim)
    with pytest.raises(CheckpointError, match="symbolic link"):
        fetch(server, [1000], tmp_path / "dest")
    assert victim.read_text() == "keep me"
