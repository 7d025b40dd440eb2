"""The on-disk state of a file being downloaded: what survives a crash, and what is thrown away."""

from __future__ import annotations

from pathlib import Path

from olmo_cli.hub.partfile import PartFile, bytes_on_disk

SIZE, CHUNK = 10_000, 3_000  # chunks [0,3000) [3000,6000) [6000,9000) [9000,10000)
DATA = bytes(i % 251 for i in range(SIZE))


def started(tmp_path: Path) -> PartFile:
    part = PartFile(tmp_path, "model.safetensors")
    assert part.open("http://h/m", SIZE, '"v1"', CHUNK) == 0
    part.write(2, 6000, DATA[6000:6500])  # out of order: the third chunk first, beyond the end so far
    part.write(0, 0, DATA[0:3000])
    part.close()  # as after kill -9: nothing else was flushed or recorded
    return part


def test_progress_survives_and_only_missing_ranges_remain(tmp_path: Path) -> None:
    started(tmp_path)
    assert bytes_on_disk(tmp_path, "model.safetensors", SIZE, '"v1"') == 3500
    part = PartFile(tmp_path, "model.safetensors")
    assert part.open("http://mirror/m", SIZE, '"v1"', 999) == 3500  # the chunking on disk is kept
    assert part.pending() == [1, 2, 3]
    assert [part.position(i) for i in part.pending()] == [(3000, 6000), (6500, 9000), (9000, 10000)]
    for i in part.pending():
        start, end = part.position(i)
        part.write(i, start, DATA[start:end])
    part.commit()
    assert part.final.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_changed_remote_file_starts_over(tmp_path: Path) -> None:
    started(tmp_path)
    assert bytes_on_disk(tmp_path, "model.safetensors", SIZE, '"v2"') == 0
    assert bytes_on_disk(tmp_path, "model.safetensors", SIZE + 1, '"v1"') == 0
    part = PartFile(tmp_path, "model.safetensors")
    assert part.open("http://h/m", SIZE, '"v2"', CHUNK) == 0
    assert part.pending() == [0, 1, 2, 3]


def test_inconsistent_cursors_start_over(tmp_path: Path) -> None:
    part = started(tmp_path)
    part.cursor_path.write_bytes(part.cursor_path.read_bytes()[:-8])  # wrong length
    assert bytes_on_disk(tmp_path, "model.safetensors", SIZE, '"v1"') == 0
    other = tmp_path / "other"
    other.mkdir()
    part = started(other)
    with open(part.data_path, "r+b") as f:
        f.truncate(4000)  # the cursor of the third chunk claims bytes the file does not have
    assert bytes_on_disk(other, "model.safetensors", SIZE, '"v1"') == 0
