"""This rank's share of each global batch, read from the dataset in the epoch's data order.

Upstream's rule (docs/format.md §5.3): optimizer step t of an epoch trains on the order's positions
`[examples_seen, examples_seen + B)` where `examples_seen` counts the instances of the epoch already
trained on; rank r of W takes the positions r, r+W, r+2W, ... of that range. So the loader keeps no
position of its own: the trainer's counters say what comes next, which is what makes resuming exact.
A global batch is the same whatever the world size; only its split over ranks changes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from olmo_cli.config.schema import TrainConfig
from olmo_cli.data.batches import RUN_ORDER_FILE, default_cache_dir
from olmo_cli.data.dataset import MemmapDataset
from olmo_cli.data.order import DataOrder, compute_order, load_order, rank_positions, write_order
from olmo_cli.data.repetition import repeats_too_often
from olmo_cli.data.summary import check_vocab
from olmo_cli.errors import DataError

__all__ = ["BatchLoader", "DeviceBatch", "RUN_ORDER_FILE", "given_order_copy"]


def given_order_copy(epoch: int) -> Path:
    """Where a run keeps the order file it was given for `epoch`, relative to the run directory: the
    trainer state names this copy (never a file elsewhere), and it survives the rewrite of
    `global_indices.npy` at each new epoch, so an older checkpoint resumes in the given order too."""
    return Path("train_data") / f"given-order-epoch{epoch}.npy"


@dataclass(frozen=True)
class DeviceBatch:
    """The instances one rank trains on in one step (or one micro-batch of them)."""

    input_ids: torch.Tensor  # int64 [b, L]
    label_mask: torch.Tensor | None  # bool [b, L], for finetuning data
    indices: np.ndarray  # global instance indices, for the record
    # What is wrong with this batch (an id beyond the vocabulary, an index beyond the data). Returned
    # rather than raised so that every rank can learn of it before any of them raises (see Trainer).
    problem: DataError | None = None
    # bool [b]: False for an instance the repetition filter drops from the loss (data.instance_filter)
    instance_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def split(self, size: int) -> list[DeviceBatch]:
        """Micro-batches of `size` instances (the last may be smaller), in order."""
        out = []
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            mask = self.label_mask[part] if self.label_mask is not None else None
            keep = self.instance_mask[part] if self.instance_mask is not None else None
            out.append(DeviceBatch(self.input_ids[part], mask, self.indices[part], instance_mask=keep))
        return out

    def to(self, device: torch.device) -> DeviceBatch:
        mask = self.label_mask.to(device) if self.label_mask is not None else None
        keep = self.instance_mask.to(device) if self.instance_mask is not None else None
        return DeviceBatch(self.input_ids.to(device), mask, self.indices, instance_mask=keep)


class BatchLoader:
    """Global batches of `cfg.global_train_batch_size` instances, this rank's share of each.

    `order_file` (a raw uint32 order, e.g. a published `global_indices.npy`) replaces the computed order
    for epoch `order_epoch`; other epochs are computed from the seed as upstream does.
    """

    def __init__(
        self,
        dataset: MemmapDataset,
        cfg: TrainConfig,
        *,
        rank: int,
        world_size: int,
        vocab_size: int,
        order_file: str | None = None,
        order_epoch: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = cfg.global_train_batch_size
        self.seed = cfg.data.seed if cfg.data.seed is not None else cfg.seed
        self.drop_last = cfg.data.drop_last
        self.rank = rank
        self.world_size = world_size
        self.vocab_size = vocab_size
        self.instance_filter = cfg.data.instance_filter
        self.order_file = order_file
        self.order_epoch = order_epoch
        self._order: tuple[int, DataOrder] | None = None

    def order(self, epoch: int) -> DataOrder:
        """The order of `epoch` (kept for the current epoch; a new epoch replaces it)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._make_order(epoch))
        return self._order[1]

    def _make_order(self, epoch: int) -> DataOrder:
        if self.order_file is not None and epoch == self.order_epoch:
            base = load_order(self.order_file)
            return DataOrder(base, len(base), f"order file {self.order_file}")
        return compute_order(
            len(self.dataset),
            self.seed,
            epoch,
            self.world_size,
            self.drop_last,
            cache_dir=default_cache_dir(),
        )

    def batches_in_epoch(self, epoch: int) -> int:
        return self.order(epoch).num_batches(self.batch_size)

    def has_batch(self, epoch: int, examples_seen: int) -> bool:
        """Whether a whole global batch is left in `epoch` after `examples_seen` instances."""
        return examples_seen + self.batch_size <= len(self.order(epoch))

    def device_batch(self, epoch: int, examples_seen: int) -> DeviceBatch:
        """This rank's share of the global batch that starts at position `examples_seen` of `epoch`.

        Bad data is reported in `DeviceBatch.problem`, not raised: the caller decides when to raise.
        """
        positions = rank_positions(0, self.batch_size, self.rank, self.world_size, start_index=examples_seen)
        indices = self.order(epoch).take(positions)
        if len(indices) and int(indices.max()) >= len(self.dataset):
            problem = DataError(
                f"the data order names instance {int(indices.max()):,}, but the data has "
                f"{len(self.dataset):,} instances",
                hint="the data order file belongs to other data (or another max_sequence_length)",
            )
            empty = torch.zeros(0, self.dataset.seq_len, dtype=torch.int64)
            return DeviceBatch(empty, None, indices, problem)
        instances = [self.dataset[int(i)] for i in indices]
        ids = np.stack([inst.input_ids for inst in instances])
        problem = None
        if ids.size and int(ids.max()) >= self.vocab_size:
            try:
                check_vocab(int(ids.max()), self.vocab_size)
            except DataError as e:
                problem = e
        mask = None
        if instances and instances[0].label_mask is not None:
            mask = torch.from_numpy(np.stack([inst.label_mask for inst in instances]))
        keep = None
        if self.instance_filter is not None:
            keep = torch.tensor([not repeats_too_often(row, self.instance_filter) for row in ids])
        return DeviceBatch(torch.from_numpy(ids), mask, indices, problem, instance_mask=keep)

    def write_order(self, epoch: int, run_dir: Path) -> Path:
        """Writes the epoch's order to `run_dir/train_data/global_indices.npy`, as upstream does; a given
        order file is kept as `given_order_copy(epoch)` too (the two share their bytes where the file
        system allows a hard link)."""
        target = run_dir / RUN_ORDER_FILE
        if self.order_file is None or epoch != self.order_epoch:
            return write_order(target, self.order(epoch))
        copy = run_dir / given_order_copy(epoch)
        source = Path(self.order_file)
        if not (source.exists() and copy.exists() and source.resolve() == copy.resolve()):
            write_order(copy, self.order(epoch))
        _share(copy, target)
        return target


def _share(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (a copy where links are impossible), replaced atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
