"""Weights & Biases, when the config has a `wandb` section: every `wandb.log_interval` steps the same
metrics as metrics.jsonl. Offline mode (files under the run directory, `wandb sync` later) when no API key
is configured, so a run never waits on a login prompt or the network; `--no-wandb` leaves it out.

wandb is imported only when this sink starts: it is slow to import and most runs do not use it.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from olmo_cli.config.schema import WandbConfig
from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.callbacks.metrics_file import step_record
from olmo_cli.train.events import EventSink, Message

if TYPE_CHECKING:
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["WandbSink", "wandb_mode"]

WANDB_HOST = "api.wandb.ai"


def wandb_mode(environ: Mapping[str, str] | None = None, netrc_path: Path | None = None) -> str:
    """The wandb mode: online when an API key is configured (WANDB_API_KEY, or a ~/.netrc entry for
    api.wandb.ai), else offline. An explicit WANDB_MODE is the user's choice and wins."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    path = netrc_path or Path(env.get("NETRC") or Path.home() / ".netrc")
    try:
        if netrc.netrc(str(path)).authenticators(WANDB_HOST):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


class WandbSink(Callback):
    name = "wandb"

    def __init__(self, cfg: WandbConfig, config: dict[str, Any], run_dir: Path, events: EventSink) -> None:
        self.cfg = cfg
        self.config = config
        self.run_dir = run_dir
        self.events = events
        self.run_id: str | None = None
        self._run: Any = None

    def _active(self, trainer: Trainer) -> bool:
        return trainer.world.is_main or not self.cfg.rank_zero_only

    def on_start(self, trainer: Trainer) -> None:
        if not self._active(trainer):
            return
        import wandb

        mode = wandb_mode()
        (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.cfg.group,
            name=self.cfg.name or trainer.cfg.run_name,
            tags=self.cfg.tags,
            config=self.config,
            dir=str(self.run_dir),
            mode=mode,
            id=self.run_id,
            resume="allow" if self.run_id else None,
        )
        self.run_id = self._run.id
        if mode == "offline" and trainer.world.is_main:
            self.events(
                Message(
                    f"wandb runs offline (no API key): sync later with `wandb sync {self.run_dir / 'wandb'}`"
                )
            )

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step = trainer.state.global_step
        if self._run is not None and (step % self.cfg.log_interval == 0 or trainer.is_final_step):
            record = step_record(trainer, metrics)
            record.pop("step")
            self._run.log({k: v for k, v in record.items() if v is not None}, step=step)

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """The wandb run is marked failed (exit code 1), not left running or reported as finished."""
        if self._run is not None:
            self._run.finish(exit_code=1)
            self._run = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("run_id"), str):
            self.run_id = state["run_id"]
