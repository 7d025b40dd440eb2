"""The global instance order: which instance every position of an epoch reads, exactly as upstream OLMo
computes it (docs/format.md §5), so that our order equals upstream's `global_indices.npy` element
for element.

For `N` instances, seed `s` and epoch `e`: a uint32 `arange(N)` shuffled in place by
`Generator(PCG64(s + e))`, then cut to `W*floor(N/W)` (`drop_last`) or padded with its own head to
`W*ceil(N/W)`. Position `p` of the epoch is instance `order[p]`; global batch `n` (0-based) is
`order[n*B:(n+1)*B]`, and rank `r` of `W` reads the batch positions `r, r+W, r+2W, ...`.

Memory and time: the shuffle is one Fisher-Yates pass over the whole array and every position depends
on all `N` draws, so no batch can be computed without the full permutation: 4 bytes per instance and
O(N) time (5 s per 1e8 instances, measured). A 2.1 TB uint16 dataset at 2048 tokens per instance has
5.2e8 instances: 2 GiB and ~48 s including writing the cache (benchmarks/bench_inspect_batch.py).
`compute_order` therefore computes a large order once and keeps it in a cache directory as a raw
uint32 file; later lookups memory-map it and read only the `B*4` bytes a batch needs (0.43 s, 68 MiB
for that dataset's batch 0, the same as for a tiny dataset). An
existing order file (a run's `train_data/global_indices.npy`, a published data-order file) is read the
same way, or over HTTP with byte ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from olmo_cli.atomic import atomic_open
from olmo_cli.errors import ConfigError, DataError, NetworkError, UsageError

ORDER_DTYPE = np.dtype("<u4")
MAX_INSTANCES = 2**32 - 1  # upstream stores indices as uint32
# Below this many instances computing an order takes well under a second: no cache file is written.
CACHE_MIN_INSTANCES = 2**24
_WRITE_CHUNK = 1 << 24  # elements per write, so writing a memmapped order never copies all of it


class IndexArray(Protocol):
    """What an order is read from: an ndarray, a np.memmap, or `remote.RemoteArray`."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: slice) -> np.ndarray: ...


def order_seed(seed: int, epoch: int) -> int:
    return seed + epoch


def total_size(num_instances: int, world_size: int, drop_last: bool) -> int:
    """The epoch's length: upstream's formulas, kept literally (its `drop_last` one is `W*floor(N/W)`)."""
    if world_size < 1:
        raise UsageError(f"the world size must be at least 1, got {world_size}")
    if num_instances % world_size == 0:
        return num_instances
    if drop_last:
        return world_size * math.ceil((num_instances - world_size) / world_size)
    return world_size * math.ceil(num_instances / world_size)


def shuffled_indices(num_instances: int, seed: int) -> np.ndarray:
    """`arange(N)` as uint32, shuffled by PCG64(seed); `seed` is already `data seed + epoch`.

    Holds the whole permutation in memory: 4 bytes per instance.
    """
    if not 0 <= num_instances < MAX_INSTANCES:
        raise DataError(
            f"{num_instances:,} instances do not fit the uint32 data order (at most {MAX_INSTANCES - 1:,})",
            hint="use fewer data files or a longer max_sequence_length",
        )
    if seed < 0:
        raise ConfigError(f"the data order seed must not be negative, got {seed}", hint="set seed= >= 0")
    indices = np.arange(num_instances, dtype=np.uint32)
    # Generator.shuffle, not permutation(): the same draws, but in place on the uint32 array.
    np.random.Generator(np.random.PCG64(seed)).shuffle(indices)
    return indices


class DataOrder:
    """One epoch's order: position -> global instance index.

    `base` holds either the unpadded permutation (length N; positions past N wrap to its head, which is
    what upstream's padding appends) or a complete order file (its length is the epoch's length).
    Reading a range touches only that range of `base`.
    """

    def __init__(self, base: IndexArray, length: int, source: str):
        if length and not len(base):
            raise DataError(f"the data order from {source} is empty")
        self.base = base
        self.length = length
        self.source = source

    def __len__(self) -> int:
        return self.length

    def positions(self, start: int, stop: int) -> np.ndarray:
        """The instance indices at epoch positions [start, stop), as int64."""
        if not 0 <= start <= stop <= self.length:
            raise UsageError(f"positions {start}..{stop} lie outside this epoch of {self.length:,}")
        n = len(self.base)
        pieces = []
        while start < stop:  # at most a few pieces: a range wraps only where padding repeats the head
            offset = start % n
            take = min(stop - start, n - offset)
            pieces.append(np.asarray(self.base[offset : offset + take], dtype=np.int64))
            start += take
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def __getitem__(self, key: slice) -> np.ndarray:
        """`order[a:b]`: positions a..b-1, so `write_order(path, order)` streams a whole epoch."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a DataOrder is read by contiguous slices")
        start, stop, _ = key.indices(self.length)
        return self.positions(start, max(start, stop))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Instance indices at arbitrary epoch positions (e.g. `rank_positions`); reads their span once."""
        positions = np.asarray(positions, dtype=np.int64)
        if not positions.size:
            return np.zeros(0, dtype=np.int64)
        low, high = int(positions.min()), int(positions.max())
        return self.positions(low, high + 1)[positions - low]

    def num_batches(self, batch_size: int) -> int:
        return self.length // batch_size

    def batch(self, batch_index: int, batch_size: int) -> np.ndarray:
        """Global batch `batch_index` (0-based): what optimizer step `batch_index + 1` trains on."""
        available = self.num_batches(batch_size)
        if not 0 <= batch_index < available:
            raise UsageError(
                f"batch {batch_index} is beyond this epoch: it has {available:,} batches "
                f"(0..{available - 1}) of {batch_size} instances"
                if available
                else f"this epoch has no complete batch: {self.length:,} instances, batch size {batch_size}",
                hint="batches are 0-based; a later epoch is chosen with --epoch",
            )
        return self.positions(batch_index * batch_size, (batch_index + 1) * batch_size)


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    """The positions within a global batch that rank `rank` trains on: r, r+W, r+2W, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank must lie in 0..{world_size - 1} for world size {world_size}, got {rank}")
    if batch_size % world_size:
        raise UsageError(
            f"the global batch size {batch_size} is not divisible by the world size {world_size}",
            hint="upstream requires global_train_batch_size to be a multiple of the number of GPUs",
        )
    return slice(rank, batch_size, world_size)


def rank_positions(
    batch_index: int, batch_size: int, rank: int, world_size: int, start_index: int = 0
) -> np.ndarray:
    """Epoch positions of rank `rank`'s device batch `batch_index`, resuming at `start_index`.

    Upstream's rank iterates `order[start_index:][rank::W]` in device batches of B/W; since W*(B/W) = B
    that is `start_index + batch_index*B + rank + W*m` for m < B/W.
    """
    share = rank_slice(batch_size, rank, world_size)
    return start_index + batch_index * batch_size + np.arange(share.start, share.stop, share.step)


def compute_order(
    num_instances: int,
    seed: int,
    epoch: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    *,
    cache_dir: Path | None = None,
    cache_min_instances: int = CACHE_MIN_INSTANCES,
    on_compute: Callable[[int], None] | None = None,
) -> DataOrder:
    """The order for (seed, epoch, N, W, drop_last); large ones come from (and go to) `cache_dir`.

    `on_compute(N)` is called before a permutation is computed, so a caller can say why it waits.
    """
    length = total_size(num_instances, world_size, drop_last)
    shuffle_seed = order_seed(seed, epoch)
    where = f"seed {seed} + epoch {epoch}"
    if cache_dir is None or num_instances < cache_min_instances:
        if on_compute is not None:
            on_compute(num_instances)
        return DataOrder(shuffled_indices(num_instances, shuffle_seed), length, f"computed ({where})")
    path = Path(cache_dir) / f"order-pcg64-seed{shuffle_seed}-n{num_instances}.u32"
    if path.is_file() and path.stat().st_size == num_instances * ORDER_DTYPE.itemsize:
        return DataOrder(_memmap(path), length, f"cached ({where}): {path}")
    if on_compute is not None:
        on_compute(num_instances)
    indices = shuffled_indices(num_instances, shuffle_seed)
    try:
        write_order(path, indices)  # atomic, so a file of the right size is always a complete one
    except OSError as e:  # the cache only saves time: a read-only or full disk must not stop anyone
        return DataOrder(indices, length, f"computed ({where}); not cached: {e}")
    return DataOrder(indices, length, f"computed ({where}), cached in {path}")


def global_indices(
    num_instances: int, seed: int, epoch: int = 0, world_size: int = 1, drop_last: bool = False
) -> np.ndarray:
    """The complete order as upstream writes it to `train_data/global_indices.npy` (uint32).

    Holds the permutation plus its padding in memory; `write_order(path, compute_order(...))` writes
    the same file with only the permutation held.
    """
    indices = shuffled_indices(num_instances, order_seed(seed, epoch))
    length = total_size(num_instances, world_size, drop_last)
    # np.resize repeats the array from its head: exactly upstream's padding.
    return indices[:length] if length <= num_instances else np.resize(indices, length)


def write_order(path: str | Path, indices: IndexArray) -> Path:
    """Write an order as raw headerless little-endian uint32, atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_open(path) as f:
        for start in range(0, len(indices), _WRITE_CHUNK):
            chunk = np.asarray(indices[start : start + _WRITE_CHUNK])
            f.write(chunk.astype(ORDER_DTYPE, copy=False).tobytes())
    return path


def load_order(
    path_or_url: str | Path, *, download: bool = True, cache_dir: Path | None = None
) -> IndexArray:
    """An existing order file (raw uint32): a local path (memory-mapped) or a URL.

    URLs are fetched whole through cached-path (http(s), s3, gs, hf), then memory-mapped. With
    `download=False` an http(s) URL is instead read in byte ranges on demand (`remote.RemoteArray`),
    which is what a look at one batch of a multi-gigabyte published order needs.
    """
    from olmo_cli.data.paths import is_url

    text = str(path_or_url)
    if is_url(text):
        if not download and text.startswith(("http://", "https://")):
            from olmo_cli.data.remote import RemoteArray

            return RemoteArray(text, ORDER_DTYPE)
        return _memmap(_fetch(text, cache_dir))
    path = Path(text).expanduser()
    if not path.is_file():
        raise DataError(f"data order file not found: {path}", hint="give a local path or an http(s) URL")
    return _memmap(path)


def _memmap(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size % ORDER_DTYPE.itemsize:
        raise DataError(
            f"{path} is not a uint32 data order file: {size} bytes is not a multiple of 4",
            hint="data order files are raw little-endian uint32 arrays (upstream's global_indices.npy)",
        )
    if size == 0:  # np.memmap refuses empty files
        return np.zeros(0, dtype=ORDER_DTYPE)
    return np.memmap(path, dtype=ORDER_DTYPE, mode="r")


def _fetch(url: str, cache_dir: Path | None) -> Path:
    import logging

    from cached_path import cached_path

    logging.getLogger("cached_path").setLevel(logging.CRITICAL)  # its failures reach the user as ours

    try:
        return Path(cached_path(url, cache_dir=cache_dir))
    except FileNotFoundError as e:
        raise NetworkError(f"data order file not found: {url}", hint="check the URL") from e
    except Exception as e:  # noqa: BLE001 - cached-path raises requests/boto/... errors alike
        raise NetworkError(f"could not download the data order file {url}: {e}") from e
