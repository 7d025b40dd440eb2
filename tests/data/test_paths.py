"""Expanding data items (`--data`, `data.paths`) into token files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _token_data import write_token_dir, write_tokens

from olmo_cli.data.paths import expand_data_paths
from olmo_cli.errors import DataError, UsageError


def _paths(items):
    return [f.path for f in expand_data_paths(items)]


def test_token_directory_lists_files_in_manifest_order_with_masks(tmp_path):
    parts = [np.arange(10), np.arange(5), np.arange(7)]
    masks = [np.ones(10, bool), np.zeros(5, bool), np.ones(7, bool)]
    write_token_dir(tmp_path / "tok", parts, masks=masks, order=[2, 0, 1], documents=[3, 1, 2])
    files = expand_data_paths([str(tmp_path / "tok")])
    names = [f.path.rsplit("/", 1)[1] for f in files]
    assert names == ["part-00002.npy", "part-00000.npy", "part-00001.npy"]
    assert [f.label_mask.rsplit("/", 1)[1] for f in files] == [n.replace(".npy", ".mask.npy") for n in names]
    assert [f.documents for f in files] == [2, 3, 1]
    assert files[0].manifest is not None and files[0].manifest.dtype == "uint16"
    assert files[0].manifest.eos_token_id == 0


def test_directory_without_manifest_is_its_sorted_npy_files(tmp_path):
    for name in ["b.npy", "a.npy", "c.npy", "a.mask.npy", "notes.txt"]:
        write_tokens(tmp_path / name, [1, 2])
    assert _paths([str(tmp_path)]) == [str(tmp_path / n) for n in ["a.npy", "b.npy", "c.npy"]]


def test_globs_files_and_urls_keep_the_given_order(tmp_path):
    for name in ["x-2.npy", "x-1.npy", "y.npy"]:
        write_tokens(tmp_path / name, [1])
    write_token_dir(tmp_path / "dir-a", [np.arange(3)])
    url = "https://example.org/data/part-0.npy"
    got = _paths([str(tmp_path / "y.npy"), url, str(tmp_path / "x-*.npy"), str(tmp_path / "dir-*")])
    assert got == [
        str(tmp_path / "y.npy"),
        url,
        str(tmp_path / "x-1.npy"),
        str(tmp_path / "x-2.npy"),
        str(tmp_path / "dir-a" / "part-00000.npy"),
    ]
    # Duplicates stay: upstream treats repeated paths as independent segments.
    assert _paths([str(tmp_path / "y.npy")] * 2) == [str(tmp_path / "y.npy")] * 2


def test_missing_paths_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data path not found: .*nope.npy"):
        expand_data_paths([str(tmp_path / "nope.npy")])
    with pytest.raises(DataError, match="no files match"):
        expand_data_paths([str(tmp_path / "*.npy")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.npy token files"):
        expand_data_paths([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="list of paths"):
        expand_data_paths(str(tmp_path))


def test_broken_token_directories_are_data_errors(tmp_path):
    directory = write_token_dir(tmp_path / "tok", [np.arange(4), np.arange(4)])
    (directory / "part-00001.npy").unlink()
    with pytest.raises(DataError, match="part-00001.npy is listed .* but missing"):
        expand_data_paths([str(directory)])
    (directory / "manifest.json").write_text(json.dumps({"format": "something-else/9", "files": []}))
    with pytest.raises(DataError, match="expected 'olmo-tokens/1'"):
        expand_data_paths([str(directory)])
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        expand_data_paths([str(directory)])
