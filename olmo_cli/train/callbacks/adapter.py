"""The deliverable of a LoRA run: `adapter.safetensors`, the adapter matrices and their settings.

Written to the run folder whenever a checkpoint is saved and when training ends (always the newest), and
into each checkpoint directory beside the full state, so every checkpoint has its adapter too. The base
checkpoint and a fingerprint of its weights travel in the file's metadata and in this callback's state,
so a resumed run (whose `load_path` is its own checkpoint) still names the base it started from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from olmo_cli.config.schema import LoRAConfig
from olmo_cli.model.state_dict import clean_param_name
from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.callbacks.checkpointer import Checkpointer
from olmo_cli.train.clip import is_dtensor
from olmo_cli.train.events import EventSink, Message

if TYPE_CHECKING:
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["AdapterWriter"]


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor (collective for a sharded parameter: every rank calls it in the same order)."""
    return param.full_tensor() if is_dtensor(param) else param  # type: ignore[attr-defined]


def _named(model: torch.nn.Module, adapters: bool) -> Iterator[tuple[str, torch.Tensor]]:
    from olmo_cli.model.lora import is_adapter_name

    for name, param in model.named_parameters():
        clean = clean_param_name(name)
        if is_adapter_name(clean) == adapters:
            yield clean, _full(param).detach()


class AdapterWriter(Callback):
    name = "adapter"

    def __init__(self, run_dir: Path, settings: LoRAConfig, base: str | None, events: EventSink) -> None:
        self.run_dir = run_dir
        self.settings = settings
        self.base = base
        self.fingerprint: str | None = None
        self.events = events
        self._seen: Path | None = None

    def on_start(self, trainer: Trainer) -> None:
        if self.fingerprint is None:  # a resumed run has it from its checkpoint
            from olmo_cli.model.lora import base_fingerprint

            self.fingerprint = base_fingerprint(_named(trainer.model, adapters=False))
        self._seen = self._checkpointer(trainer).last_path

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        saved = self._checkpointer(trainer).last_path
        if saved is not None and saved != self._seen:
            self._seen = saved
            self.write(trainer, saved)

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        if trainer.state.global_step == 0:
            return
        saved = self._checkpointer(trainer).last_path  # the final checkpoint, if on_end just wrote one
        path = self.write(trainer, saved if saved != self._seen else None)
        if path is not None:
            self.events(Message(f"LoRA adapter written to {path}"))

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base = state.get("base", self.base)
        self.fingerprint = state.get("fingerprint", self.fingerprint)

    # ---- writing ----------------------------------------------------------------------------------

    @staticmethod
    def _checkpointer(trainer: Trainer) -> Checkpointer:
        return next(c for c in trainer.callbacks if isinstance(c, Checkpointer))

    def write(self, trainer: Trainer, checkpoint: Path | None) -> Path | None:
        """Gathers the adapters (collective) and writes them on the main rank: to the run folder, and into
        `checkpoint` when one was just saved. Returns the run folder's file (main rank; else None)."""
        from olmo_cli.checkpoint.layout import ADAPTER_FILE
        from olmo_cli.model.lora import Adapter, write_adapter

        tensors = {name: t.to("cpu", torch.float32) for name, t in _named(trainer.model, adapters=True)}
        if not trainer.world.is_main:
            return None
        extra = {"step": str(trainer.state.global_step)}
        if trainer.cfg.run_name:
            extra["run"] = trainer.cfg.run_name
        adapter = Adapter(tensors, self.settings, self.base, self.fingerprint, extra)
        if checkpoint is not None and checkpoint.is_dir():
            write_adapter(checkpoint / ADAPTER_FILE, adapter)
        return write_adapter(self.run_dir / ADAPTER_FILE, adapter)
