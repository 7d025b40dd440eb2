"""MemmapDataset: instances cut as docs/format.md §3.3 says, read from local token files."""

from __future__ import annotations

import numpy as np
import pytest
from _token_data import expected_instances, random_tokens, write_token_dir, write_tokens

from olmo_cli.config.schema import DataConfig
from olmo_cli.data.dataset import MemmapDataset, build_dataset
from olmo_cli.errors import DataError, UsageError


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_instances_across_files_with_remainders(tmp_path, rng):
    seq_len = 8
    arrays = [random_tokens(rng, n) for n in (25, 8, 3, 17, 0, 16)]
    paths = [write_tokens(tmp_path / f"f{i}.npy", a) for i, a in enumerate(arrays)]
    ds = MemmapDataset([str(p) for p in paths], seq_len)
    expected = expected_instances(arrays, seq_len)
    assert len(ds) == len(expected) == 3 + 1 + 0 + 2 + 0 + 2
    assert ds.file_instances.tolist() == [3, 1, 0, 2, 0, 2]
    for i, want in enumerate(expected):
        item = ds[i]
        assert item.input_ids.dtype == np.int64 and item.input_ids.shape == (seq_len,)
        assert np.array_equal(item.input_ids, want)
        assert item.index == i and item.label_mask is None
    # Where each instance came from: file and token offset.
    where = [(ds[i].file_index, ds[i].token_offset) for i in range(len(ds))]
    assert where == [(0, 0), (0, 8), (0, 16), (1, 0), (3, 0), (3, 8), (5, 0), (5, 8)]
    assert ds[4].path == str(paths[3]) and ds[4].metadata == {"path": str(paths[3])}
    with pytest.raises(UsageError, match="8 instances"):
        ds[8]


def test_item_is_the_numpy_slice_uint32(tmp_path, rng):
    tokens = random_tokens(rng, 1000, high=100_000)
    path = write_tokens(tmp_path / "big.npy", tokens, "uint32")
    ds = MemmapDataset([str(path)], 64, "uint32")
    raw = np.memmap(path, dtype="<u4", mode="r")
    for i in (0, 7, 14):
        assert np.array_equal(ds[i].input_ids, raw[i * 64 : (i + 1) * 64].astype(np.int64))
    assert ds.total_tokens == 1000 and len(ds) == 15


def test_duplicate_paths_are_independent_segments(tmp_path, rng):
    a, b = random_tokens(rng, 20), random_tokens(rng, 12)
    pa, pb = write_tokens(tmp_path / "a.npy", a), write_tokens(tmp_path / "b.npy", b)
    ds = MemmapDataset([str(pa), str(pb), str(pa)], 4)
    expected = expected_instances([a, b, a], 4)
    assert len(ds) == 5 + 3 + 5
    assert all(np.array_equal(ds[i].input_ids, e) for i, e in enumerate(expected))
    assert ds[8].file_index == 2 and ds[8].token_offset == 0


def test_files_are_opened_only_when_read(tmp_path, rng):
    paths = [str(write_tokens(tmp_path / f"{i}.npy", random_tokens(rng, 16))) for i in range(5)]
    ds = MemmapDataset(paths, 8)
    assert ds._arrays == {}
    ds[7]
    assert [key[0] for key in ds._arrays] == [paths[3]]


def test_label_masks(tmp_path, rng):
    a, b = random_tokens(rng, 10), random_tokens(rng, 9)
    ma, mb = rng.random(10) < 0.5, rng.random(9) < 0.5
    write_tokens(tmp_path / "a.npy", a), write_tokens(tmp_path / "b.npy", b)
    ma.tofile(tmp_path / "a.mask.npy"), mb.tofile(tmp_path / "b.mask.npy")
    paths = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    masks = [str(tmp_path / "a.mask.npy"), str(tmp_path / "b.mask.npy")]
    ds = MemmapDataset(paths, 3, label_mask_paths=masks)
    expected = expected_instances([ma.astype(np.int64), mb.astype(np.int64)], 3)
    assert len(ds) == 6
    for i, want in enumerate(expected):
        assert ds[i].label_mask.dtype == np.bool_
        assert ds[i].label_mask.tolist() == want.astype(bool).tolist()
    np.ones(8, bool).tofile(tmp_path / "b.mask.npy")
    with pytest.raises(DataError, match="has 8 entries but .*b.npy has 9 tokens"):
        MemmapDataset(paths, 3, label_mask_paths=masks)
    with pytest.raises(DataError, match="1 label mask files for 2 token files"):
        MemmapDataset(paths, 3, label_mask_paths=masks[:1])


def test_bad_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*gone.npy"):
        MemmapDataset([str(tmp_path / "gone.npy")], 4)
    (tmp_path / "odd.npy").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="not a whole number of uint16 tokens"):
        MemmapDataset([str(tmp_path / "odd.npy")], 4)


def test_datasets_mapping_sorts_labels_and_concatenates(tmp_path, rng):
    arrays = {name: random_tokens(rng, 12) for name in ("z1", "a1", "a2", "m1")}
    for name, tokens in arrays.items():
        write_tokens(tmp_path / f"{name}.npy", tokens)
    p = {name: str(tmp_path / f"{name}.npy") for name in arrays}
    data = DataConfig(datasets={"zeta": [p["z1"]], "alpha": [p["a1"], p["a2"]], "mid": [p["m1"]]})
    ds = build_dataset(data, seq_len=6)
    order = ["a1", "a2", "m1", "z1"]
    assert ds.paths == [p[n] for n in order]
    expected = expected_instances([arrays[n] for n in order], 6)
    assert all(np.array_equal(ds[i].input_ids, e) for i, e in enumerate(expected))
    assert [ds[i].metadata for i in range(len(ds))] == [
        {"label": label} for label in ["alpha"] * 4 + ["mid"] * 2 + ["zeta"] * 2
    ]


def test_build_dataset_from_config_paths_and_overrides(tmp_path, rng):
    parts = [random_tokens(rng, 20), random_tokens(rng, 11)]
    masks = [rng.random(20) < 0.5, rng.random(11) < 0.5]
    directory = write_token_dir(tmp_path / "chat", parts, masks=masks)
    loose = write_tokens(tmp_path / "loose.npy", random_tokens(rng, 30))
    ds = build_dataset(DataConfig(paths=[str(loose)]), seq_len=5)
    assert len(ds) == 6 and ds.label_mask_paths is None
    # --data replaces data.paths; the token directory brings its label masks along.
    ds = build_dataset(DataConfig(paths=[str(loose)]), seq_len=5, data_items=[str(directory)])
    assert len(ds) == 4 + 2
    assert ds[5].label_mask.tolist() == masks[1][5:10].tolist()
    with pytest.raises(DataError, match="holds uint16 tokens but the config reads uint32"):
        build_dataset(DataConfig(paths=[str(directory)], memmap_dtype="uint32"), seq_len=5)
    with pytest.raises(DataError, match="some token files have label masks"):
        build_dataset(DataConfig(paths=[str(directory), str(loose)]), seq_len=5)
    with pytest.raises(UsageError, match="names no training data"):
        build_dataset(DataConfig(), seq_len=5)
    explicit = DataConfig(paths=[str(loose)], label_mask_paths=[str(tmp_path / "loose.mask.npy")])
    np.zeros(30, bool).tofile(tmp_path / "loose.mask.npy")
    assert not build_dataset(explicit, seq_len=5)[0].label_mask.any()


def test_dataset_pickles_for_worker_processes(tmp_path, rng):
    import pickle

    tokens = random_tokens(rng, 64)
    ds = MemmapDataset([str(write_tokens(tmp_path / "a.npy", tokens))], 8)
    ds[0]  # opens a descriptor, which must not travel to another process
    copy = pickle.loads(pickle.dumps(ds))
    assert all(np.array_equal(copy[i].input_ids, tokens[i * 8 : (i + 1) * 8]) for i in range(8))
