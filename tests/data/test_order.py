"""The global data order against an independent, plain re-implementation of docs/format.md §5."""

from __future__ import annotations

import math

import numpy as np
import pytest

from olmo_cli.data.order import (
    DataOrder,
    compute_order,
    global_indices,
    load_order,
    rank_positions,
    rank_slice,
    shuffled_indices,
    total_size,
    write_order,
)
from olmo_cli.errors import DataError, NetworkError, UsageError
from tests._http_server import serve


def upstream_global_indices(n: int, seed: int, epoch: int, world_size: int, drop_last: bool) -> np.ndarray:
    """Section 5.3 items 1-2, written out literally (including upstream's two padding branches)."""
    indices = np.arange(n, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed + epoch)).shuffle(indices)
    if drop_last and n % world_size:
        total = world_size * math.ceil((n - world_size) / world_size)
        return indices[:total]
    total = world_size * math.ceil(n / world_size)
    padding = total - n
    if padding <= n:
        return np.concatenate([indices, indices[:padding]])
    return np.concatenate([indices, np.tile(indices, math.ceil(padding / n))[:padding]])


def upstream_device_batches(
    indices: np.ndarray, start_index: int, rank: int, world_size: int, device_batch: int
) -> list[np.ndarray]:
    """Section 5.3 item 4: rank r takes order[start:], every W-th element from r, in device batches
    of Bd; a partial final device batch is dropped."""
    mine = indices[start_index:][rank::world_size]
    return [mine[k * device_batch : (k + 1) * device_batch] for k in range(len(mine) // device_batch)]


def test_check_vector():
    expected = [17, 4, 14, 3, 5, 12, 6, 15, 18, 13, 10, 11, 2, 19, 0, 16, 7, 9, 8, 1]
    assert shuffled_indices(20, 6198).tolist() == expected
    order = compute_order(20, seed=6198, epoch=0)
    assert order.positions(0, 20).tolist() == expected
    assert shuffled_indices(20, 6198).dtype == np.uint32


@pytest.mark.parametrize("seed,epoch", [(6198, 0), (6198, 1), (0, 0), (12345, 3)])
def test_order_is_default_rng_permutation_of_seed_plus_epoch(seed, epoch):
    order = compute_order(1000, seed=seed, epoch=epoch)
    assert np.array_equal(order.positions(0, 1000), np.random.default_rng(seed + epoch).permutation(1000))


@pytest.mark.parametrize("world_size", [1, 3, 8])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 20, 23, 24, 101])
def test_global_indices_match_upstream(n, world_size, drop_last):
    expected = upstream_global_indices(n, 6198, 2, world_size, drop_last) if n else np.zeros(0, np.uint32)
    got = global_indices(n, seed=6198, epoch=2, world_size=world_size, drop_last=drop_last)
    assert got.dtype == np.uint32
    assert got.tolist() == expected.tolist()
    assert len(got) == total_size(n, world_size, drop_last)
    if drop_last:
        assert len(got) == world_size * (n // world_size)
    else:
        assert len(got) == world_size * math.ceil(n / world_size)


def test_padding_repeats_the_head_more_than_once():
    # N=2, W=8: six padding entries from a two-element permutation, upstream's np.tile branch.
    got = global_indices(2, seed=1, world_size=8)
    head = shuffled_indices(2, 1).tolist()
    assert got.tolist() == head * 4


@pytest.mark.parametrize("world_size", [1, 3, 8])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("start_index", [0, 24, 7])
def test_rank_batches_match_upstream_iteration(world_size, drop_last, start_index):
    n, batch_size, seed = 203, 24, 77
    device_batch = batch_size // world_size
    expected_order = upstream_global_indices(n, seed, 0, world_size, drop_last)
    order = compute_order(n, seed=seed, world_size=world_size, drop_last=drop_last)
    for rank in range(world_size):
        expected = upstream_device_batches(expected_order, start_index, rank, world_size, device_batch)
        assert expected, "the case should have at least one device batch"
        for k, device in enumerate(expected):
            positions = rank_positions(k, batch_size, rank, world_size, start_index)
            assert order.take(positions).tolist() == device.tolist()
            if start_index % batch_size == 0:  # whole global batches: the batch view gives the same
                batch = order.batch(start_index // batch_size + k, batch_size)
                assert batch[rank_slice(batch_size, rank, world_size)].tolist() == device.tolist()


def test_global_batch_is_independent_of_world_size():
    n, batch_size = 200, 24
    one = compute_order(n, seed=5, world_size=1)
    eight = compute_order(n, seed=5, world_size=8)
    for b in range(one.num_batches(batch_size)):
        assert one.batch(b, batch_size).tolist() == eight.batch(b, batch_size).tolist()
        shares = [eight.batch(b, batch_size)[rank_slice(batch_size, r, 8)] for r in range(8)]
        assert sorted(np.concatenate(shares).tolist()) == sorted(one.batch(b, batch_size).tolist())


def test_batch_beyond_the_epoch_says_how_many_there_are():
    order = compute_order(100, seed=1)
    assert order.num_batches(8) == 12
    assert len(order.batch(11, 8)) == 8
    with pytest.raises(UsageError, match=r"12 batches \(0\.\.11\)"):
        order.batch(12, 8)
    with pytest.raises(UsageError, match="no complete batch"):
        compute_order(3, seed=1).batch(0, 8)


def test_rank_arguments_are_checked():
    with pytest.raises(UsageError, match="not divisible"):
        rank_slice(10, 0, 3)
    with pytest.raises(UsageError, match="rank must lie in 0..2"):
        rank_slice(9, 3, 3)


def test_order_file_round_trip_local(tmp_path):
    indices = global_indices(1001, seed=3, world_size=8)
    path = write_order(tmp_path / "train_data" / "global_indices.npy", indices)
    assert path.stat().st_size == 4 * len(indices)
    assert np.array_equal(np.fromfile(path, dtype="<u4"), indices)  # raw, headerless
    assert [p.name for p in path.parent.iterdir()] == ["global_indices.npy"]  # no temp file left behind
    loaded = load_order(path)
    assert np.array_equal(np.asarray(loaded), indices)
    from_file = DataOrder(loaded, len(loaded), str(path))
    assert from_file.batch(3, 16).tolist() == indices[48:64].tolist()


def test_order_file_round_trip_over_http(tmp_path):
    indices = global_indices(5000, seed=11, epoch=1)
    write_order(tmp_path / "order.npy", indices)
    with serve() as server:
        server.files["order.npy"] = (tmp_path / "order.npy").read_bytes()
        downloaded = load_order(server.url("order.npy"), cache_dir=tmp_path / "cache")
        assert np.array_equal(np.asarray(downloaded), indices)
        ranged = load_order(server.url("order.npy"), download=False)
        assert len(ranged) == 5000
        server.log.clear()
        assert DataOrder(ranged, len(ranged), "remote").batch(2, 32).tolist() == indices[64:96].tolist()
        assert server.served("order.npy") == 32 * 4  # only the batch's bytes were fetched
        with pytest.raises(NetworkError, match="missing.npy"):
            load_order(server.url("missing.npy"), cache_dir=tmp_path / "cache")


def test_load_order_rejects_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_order(tmp_path / "nope.npy")
    (tmp_path / "odd.npy").write_bytes(b"\x00" * 6)
    with pytest.raises(DataError, match="not a multiple of 4"):
        load_order(tmp_path / "odd.npy")


def test_large_orders_are_cached_once(tmp_path):
    computed: list[int] = []
    first = compute_order(
        3000, seed=9, epoch=1, cache_dir=tmp_path, cache_min_instances=1000, on_compute=computed.append
    )
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["order-pcg64-seed10-n3000.u32"]
    second = compute_order(
        3000,
        seed=9,
        epoch=1,
        world_size=8,
        cache_dir=tmp_path,
        cache_min_instances=1000,
        on_compute=computed.append,
    )
    assert computed == [3000]  # the second lookup read the cache
    assert "cached" in second.source and isinstance(second.base, np.memmap)
    assert np.array_equal(second.positions(0, 3000), first.positions(0, 3000))
    assert len(second) == 3000  # 3000 % 8 == 0: no padding
    assert np.array_equal(second.positions(0, 3000), shuffled_indices(3000, 10))
    # A truncated cache file (say, from a full disk) is recomputed, not trusted.
    files[0].write_bytes(files[0].read_bytes()[:100])
    third = compute_order(
        3000, seed=9, epoch=1, cache_dir=tmp_path, cache_min_instances=1000, on_compute=computed.append
    )
    assert computed == [3000, 3000]
    assert np.array_equal(third.positions(0, 3000), shuffled_indices(3000, 10))


def test_writing_a_data_order_streams_the_padded_epoch(tmp_path, monkeypatch):
    from olmo_cli.data import order as order_module

    monkeypatch.setattr(order_module, "_WRITE_CHUNK", 7)  # several chunks, one across the padding seam
    order = compute_order(101, seed=4, epoch=1, world_size=8)
    path = write_order(tmp_path / "global_indices.npy", order)
    assert np.fromfile(path, dtype="<u4").tolist() == upstream_global_indices(101, 4, 1, 8, False).tolist()
