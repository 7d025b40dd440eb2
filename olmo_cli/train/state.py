"""The trainer's counters and RNG state, as upstream's `train.pt` holds them (docs/format.md §4.4), and
the rules for restoring them (§4.7).

`train.pt` keys: `epoch`, `global_step`, `global_train_examples_seen_this_epoch`,
`global_train_tokens_seen`, `world_size`, `checkpoints`, `unsharded_checkpoints`,
`ephemeral_checkpoints` (owned by the checkpointer callback), `rng` ({python, numpy, torch[, cuda]}).
We add `callbacks` ({name: state} of the other callbacks) and `data_order_file`; upstream ignores
keys it does not know, and we ignore theirs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from olmo_cli.config.schema import TrainConfig

__all__ = ["TrainerState", "restore_rng", "rng_state"]


@dataclass
class TrainerState:
    """Where training stands. Counters are incremented before a step runs (upstream's order), so
    during step t `global_step` is t and the counters include the batch being trained on."""

    epoch: int = 0
    global_step: int = 0
    examples_seen: int = 0  # instances of the current epoch already trained on (the loader's start)
    tokens_seen: int = 0  # global tokens trained on, across epochs
    data_order_file: str | None = None  # an order file given for epoch `data_order_epoch`
    data_order_epoch: int | None = None

    def as_train_pt(self, world_size: int, *, rng: bool = True) -> dict[str, Any]:
        """The upstream keys this state owns (the checkpoint lists are added by the checkpointer)."""
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "global_train_examples_seen_this_epoch": self.examples_seen,
            "global_train_tokens_seen": self.tokens_seen,
            "world_size": world_size,
        }
        if self.data_order_file is not None:
            out["data_order_file"] = self.data_order_file
            out["data_order_epoch"] = self.data_order_epoch
        if rng:
            out["rng"] = rng_state()
        return out

    @classmethod
    def restored(cls, saved: dict[str, Any], cfg: TrainConfig, world_size: int) -> tuple[TrainerState, bool]:
        """The state to continue from, per upstream's restore rules; and whether to restore the RNG.

        `saved` has been through `checkpoint.trainer_state.normalize_trainer_state` (old counter names
        filled in). `restore_dataloader: false` starts the data (and the step count) over; a config
        `epoch` that differs from the checkpoint's starts that epoch from its beginning;
        `fast_forward_batches` skips batches (counted in examples, not tokens); the RNG is restored only
        when the world size is the one that saved it.
        """
        state = cls(
            epoch=int(saved.get("epoch") or 0),
            global_step=int(saved["global_step"]),
            examples_seen=int(saved["global_train_examples_seen_this_epoch"]),
            tokens_seen=int(saved["global_train_tokens_seen"]),
        )
        order_file = saved.get("data_order_file")
        if isinstance(order_file, str):
            state.data_order_file = order_file
            state.data_order_epoch = saved.get("data_order_epoch")
        if not cfg.restore_dataloader:
            state = cls()
        elif cfg.epoch is not None and cfg.epoch != state.epoch:
            state.epoch = cfg.epoch
            state.examples_seen = 0
        if cfg.fast_forward_batches:
            state.examples_seen += cfg.fast_forward_batches * cfg.global_train_batch_size
        same_world = saved.get("world_size") == world_size
        return state, same_world and isinstance(saved.get("rng"), dict)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from: Python's, NumPy's legacy global one, torch's CPU (and the
    current CUDA device's) generator."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Puts back what `rng_state` saved; parts a checkpoint lacks (no CUDA there) are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))  # type: ignore[arg-type]
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
