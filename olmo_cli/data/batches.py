"""The instances of a global training batch: config + data + data order -> what step `n + 1` trains on.

This is upstream's inspection recipe (docs/format.md §5.5): batch `n` (0-based) is
`order[n*B:(n+1)*B]`, each index read from the dataset the config describes; rank `r` of `W` gets the
batch positions `r, r+W, ...`. Only what is asked for is read: `B` order entries and the chosen
instances. Counting instances needs every file's size (a stat or HEAD each), and the order of a large
dataset comes from a cache file computed once (see `order.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from olmo_cli.config.schema import TrainConfig
from olmo_cli.data.dataset import Instance, MemmapDataset, build_dataset
from olmo_cli.data.order import DataOrder, compute_order, load_order, rank_slice
from olmo_cli.errors import DataError, UsageError

RUN_ORDER_FILE = Path("train_data") / "global_indices.npy"
_RANGE = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class BatchSource:
    """A dataset and one epoch's order, with the numbers that turn batch indices into positions."""

    dataset: MemmapDataset
    order: DataOrder
    batch_size: int
    seed: int
    epoch: int
    world_size: int

    @property
    def num_batches(self) -> int:
        return self.order.num_batches(self.batch_size)


@dataclass(frozen=True)
class BatchEntry:
    batch: int  # global batch index (0-based)
    position: int  # position within the global batch
    instance: Instance


@dataclass(frozen=True)
class RunFiles:
    config: Path
    order: Path | None  # the order file the run wrote, when there is one


def default_cache_dir() -> Path:
    """Where computed data orders are kept (XDG cache convention)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "olmo" / "data-order"


def parse_batch_range(text: str) -> range:
    """`"7"` -> batch 7; `"3..5"` -> batches 3, 4 and 5 (both ends included)."""
    match = _RANGE.match(text)
    if not match:
        raise UsageError(f"not a batch number or range: {text!r}", hint="e.g. 0, 12 or 3..5 (inclusive)")
    first = int(match[1])
    last = int(match[2]) if match[2] is not None else first
    if last < first:
        raise UsageError(f"empty batch range {text!r}: {last} comes before {first}")
    return range(first, last + 1)


def run_files(directory: Path) -> RunFiles:
    """The saved config of a run or checkpoint directory, and the run's data order file if present."""
    config = directory / "config.yaml"
    if not config.is_file():
        raise UsageError(
            f"{directory} has no config.yaml",
            hint="give a run directory (save_folder) or a checkpoint directory inside it (stepN/)",
        )
    for candidate in (directory / RUN_ORDER_FILE, directory.parent / RUN_ORDER_FILE):
        if candidate.is_file():
            return RunFiles(config, candidate)
    return RunFiles(config, None)


def open_batches(
    cfg: TrainConfig,
    *,
    data_items: Sequence[str] | None = None,
    order_file: str | Path | None = None,
    epoch: int | None = None,
    world_size: int = 1,
    cache_dir: Path | None = None,
    on_compute: Callable[[int], None] | None = None,
) -> BatchSource:
    """Build the dataset and the order for one epoch of a config (`--data` replaces data.paths).

    With `order_file` the order is read from it (an http(s) URL in byte ranges); otherwise it is
    computed from `data.seed` (else `seed`) and the epoch, cached in `cache_dir` when large.
    """
    dataset = build_dataset(cfg.data, cfg.model.max_sequence_length, data_items)
    seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
    epoch = epoch if epoch is not None else (cfg.epoch or 0)
    if order_file is not None:
        base = load_order(order_file, download=False)
        order = DataOrder(base, len(base), f"order file {order_file}")
    else:
        order = compute_order(
            len(dataset),
            seed,
            epoch,
            world_size,
            cfg.data.drop_last,
            cache_dir=cache_dir,
            on_compute=on_compute,
        )
    rank_slice(cfg.global_train_batch_size, 0, world_size)  # the batch must split evenly over ranks
    return BatchSource(dataset, order, cfg.global_train_batch_size, seed, epoch, world_size)


def read_batch(
    source: BatchSource, batch: int, *, rank: int | None = None, instance: int | None = None
) -> list[BatchEntry]:
    """The instances of global batch `batch`: all of them, rank `rank`'s share, and/or the one at
    `instance` (a position within what is shown: the batch, or the rank's share)."""
    indices = source.order.batch(batch, source.batch_size)
    positions = list(range(source.batch_size))
    if rank is not None:
        positions = positions[rank_slice(source.batch_size, rank, source.world_size)]
    if instance is not None:
        if not 0 <= instance < len(positions):
            what = f"rank {rank}'s share of the batch" if rank is not None else "the batch"
            raise UsageError(f"--instance {instance} is outside {what}: positions 0..{len(positions) - 1}")
        positions = [positions[instance]]
    entries = []
    for position in positions:
        index = int(indices[position])
        if index >= len(source.dataset):
            raise DataError(
                f"the data order names instance {index:,}, "
                f"but the data has {len(source.dataset):,} instances",
                hint="the order file belongs to other data (or another max_sequence_length)",
            )
        entries.append(BatchEntry(batch, position, source.dataset[index]))
    return entries
