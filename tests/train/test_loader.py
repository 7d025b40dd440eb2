"""The loader hands each rank exactly upstream's share of each global batch, read from the right bytes."""

from __future__ import annotations

import numpy as np
import pytest

from olmo_cli.config.schema import InstanceFilterConfig
from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.errors import DataError
from olmo_cli.train.loader import RUN_ORDER_FILE, BatchLoader
from tests.train._runs import SEQ, run_config, write_token_dir

N_FILE_TOKENS = (23 * SEQ + 5, 17 * SEQ + 9)  # two files, each with a remainder that is dropped


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 60, size=n).astype(np.uint16) for n in N_FILE_TOKENS]
    paths = []
    for i, tokens in enumerate(arrays):
        path = tmp_path / f"f{i}.npy"
        tokens.astype("<u2").tofile(path)
        paths.append(str(path))
    # docs/format.md §3.3: each file's whole instances, in file order.
    instances = [a[k * SEQ : (k + 1) * SEQ] for a in arrays for k in range(len(a) // SEQ)]
    return MemmapDataset(paths, SEQ, "uint16"), np.stack(instances).astype(np.int64)


def _loader(dataset, cfg, rank=0, world=1, **kwargs):
    return BatchLoader(dataset, cfg, rank=rank, world_size=world, vocab_size=60, **kwargs)


def test_batches_follow_the_seeded_order(tmp_path, data):
    dataset, instances = data
    cfg = run_config(tmp_path, global_train_batch_size=8)
    loader = _loader(dataset, cfg)
    perm = np.random.default_rng(cfg.seed).permutation(40)  # drop_last: 40 instances, a multiple of 1
    for step in range(5):
        batch = loader.device_batch(0, step * 8)
        assert np.array_equal(batch.indices, perm[step * 8 : (step + 1) * 8])
        assert np.array_equal(batch.input_ids.numpy(), instances[perm[step * 8 : (step + 1) * 8]])
    assert loader.batches_in_epoch(0) == 5
    assert loader.has_batch(0, 32) and not loader.has_batch(0, 40)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_the_same_global_batch(tmp_path, data, world):
    dataset, _ = data
    cfg = run_config(tmp_path, global_train_batch_size=8)
    whole = _loader(dataset, cfg).device_batch(0, 16).indices
    # drop_last truncates the epoch to a multiple of W; for W in (2, 4) all 40 instances stay.
    shares = [_loader(dataset, cfg, rank=r, world=world).device_batch(0, 16).indices for r in range(world)]
    for rank, share in enumerate(shares):
        assert np.array_equal(share, whole[rank::world])  # strided: positions r, r+W, ...


def test_micro_batches_split_in_order(tmp_path, data):
    dataset, _ = data
    batch = _loader(dataset, run_config(tmp_path)).device_batch(0, 0)
    parts = batch.split(3)
    assert [len(p) for p in parts] == [3, 3, 2]
    assert np.array_equal(np.concatenate([p.indices for p in parts]), batch.indices)
    assert all(p.input_ids.dtype.is_floating_point is False for p in parts)


def test_each_epoch_has_its_own_order(tmp_path, data):
    dataset, _ = data
    cfg = run_config(tmp_path)
    loader = _loader(dataset, cfg)
    second = loader.device_batch(1, 0).indices
    assert np.array_equal(second, np.random.default_rng(cfg.seed + 1).permutation(40)[:8])


def test_an_order_file_replaces_its_epoch_only(tmp_path, data):
    dataset, instances = data
    order = np.arange(39, -1, -1, dtype="<u4")
    order.tofile(tmp_path / "order.npy")
    cfg = run_config(tmp_path)
    loader = _loader(dataset, cfg, order_file=str(tmp_path / "order.npy"), order_epoch=0)
    assert np.array_equal(loader.device_batch(0, 8).indices, np.arange(31, 23, -1))
    assert np.array_equal(loader.device_batch(0, 8).input_ids.numpy(), instances[31:23:-1])
    assert np.array_equal(
        loader.device_batch(1, 0).indices, np.random.default_rng(cfg.seed + 1).permutation(40)[:8]
    )


def test_order_is_written_in_upstreams_raw_format(tmp_path, data):
    dataset, _ = data
    cfg = run_config(tmp_path)
    written = _loader(dataset, cfg).write_order(0, tmp_path / "run")
    assert written == tmp_path / "run" / RUN_ORDER_FILE
    assert written.stat().st_size == 40 * 4  # headerless uint32
    assert np.array_equal(np.fromfile(written, dtype="<u4"), np.random.default_rng(cfg.seed).permutation(40))


def test_an_order_naming_missing_instances_is_a_data_error(tmp_path, data):
    dataset, _ = data
    np.arange(100, 140, dtype="<u4").tofile(tmp_path / "order.npy")
    loader = _loader(dataset, run_config(tmp_path), order_file=str(tmp_path / "order.npy"), order_epoch=0)
    # Reported with the batch, not raised: the trainer raises once every rank knows (no rank left waiting).
    problem = loader.device_batch(0, 0).problem
    assert isinstance(problem, DataError) and "names instance 107" in problem.message


def test_ids_beyond_the_vocabulary_are_a_data_error(tmp_path):
    directory = write_token_dir(tmp_path / "big", (np.arange(8 * SEQ) % 70).astype(np.uint16))
    dataset = MemmapDataset([str(directory / "part-00000.npy")], SEQ, "uint16")
    problem = _loader(dataset, run_config(tmp_path)).device_batch(0, 0).problem
    assert isinstance(problem, DataError) and "token id 69" in problem.message
    assert "tokenizer" in problem.hint
    good = write_token_dir(tmp_path / "good", (np.arange(8 * SEQ) % 60).astype(np.uint16))
    dataset = MemmapDataset([str(good / "part-00000.npy")], SEQ, "uint16")
    assert _loader(dataset, run_config(tmp_path)).device_batch(0, 0).problem is None


def test_label_masks_travel_with_their_instances(tmp_path):
    tokens = np.arange(16 * SEQ, dtype=np.uint16) % 50
    mask = (np.arange(16 * SEQ) % 3 == 0).astype(np.bool_)
    tokens.tofile(tmp_path / "t.npy")
    mask.tofile(tmp_path / "t.mask.npy")
    dataset = MemmapDataset([str(tmp_path / "t.npy")], SEQ, "uint16", [str(tmp_path / "t.mask.npy")])
    batch = _loader(dataset, run_config(tmp_path)).device_batch(0, 0)
    for row, index in enumerate(batch.indices):
        assert np.array_equal(batch.label_mask[row].numpy(), mask[index * SEQ : (index + 1) * SEQ])


def test_the_repetition_filter_marks_instances_with_many_copies(tmp_path):
    # even instances repeat one id 16 times (period 1), odd ones count up (no short period)
    rows = [np.full(SEQ, k) if k % 2 == 0 else np.arange(SEQ) + 20 for k in range(16)]
    np.concatenate(rows).astype("<u2").tofile(tmp_path / "t.npy")
    dataset = MemmapDataset([str(tmp_path / "t.npy")], SEQ, "uint16")
    rule = InstanceFilterConfig(repetition_max_period=5, repetition_min_period=1, repetition_max_count=16)
    cfg = run_config(tmp_path)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"instance_filter": rule})})
    batch = _loader(dataset, cfg).device_batch(0, 0)
    assert batch.instance_mask.tolist() == [index % 2 == 1 for index in batch.indices]
    parts = batch.split(3)
    assert np.array_equal(
        np.concatenate([p.instance_mask.numpy() for p in parts]), batch.instance_mask.numpy()
    )
    assert _loader(dataset, run_config(tmp_path)).device_batch(0, 0).instance_mask is None
    strict = rule.model_copy(update={"repetition_max_count": 17})  # 16 copies are not 17
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"instance_filter": strict})})
    assert _loader(dataset, cfg).device_batch(0, 0).instance_mask.all()
