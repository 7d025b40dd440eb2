"""Checkpoints during training: when to save, which kind, what to keep, and the `latest` pointers.

Kinds and cadence follow upstream (docs/format.md §4.1):
- regular, every `save_interval` steps, keeping the newest `save_num_checkpoints_to_keep`: sharded
  (`step{N}/`, torch.distributed.checkpoint) when several processes train, and unsharded
  (`step{N}-unsharded/`) for one process, where sharding would only add files;
- unsharded, every `save_interval_unsharded` steps, keeping `save_num_unsharded_checkpoints_to_keep`;
- ephemeral, every `save_interval_ephemeral` steps: at most one kept, gone once a regular one is written;
- a final one when training ends (unsharded if `save_interval_unsharded` is set, else regular), and a
  regular one when a signal stops training; none twice at the same step.
Keep counts: -1 keeps all, 0 never saves that kind. `latest` points at the newest sharded checkpoint and
`latest-unsharded` at the newest unsharded one (relative symlinks, replaced atomically).

A checkpoint directory is complete or absent: the writers build `<name>-tmp` and rename it; a checkpoint
is deleted by renaming it to a hidden name first. Leftovers of a killed run are removed at start.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from olmo_cli.checkpoint.layout import (
    CONFIG_FILE,
    SHARDED_MODEL_DIR,
    SHARDED_TRAIN_DIR,
    UNSHARDED_SUFFIX,
    checkpoint_dir_name,
    find_latest_checkpoint,
    parse_step,
)
from olmo_cli.errors import CheckpointError
from olmo_cli.train.callbacks.base import Callback
from olmo_cli.train.events import CheckpointSaved, EventSink, Message
from olmo_cli.world import barrier, broadcast_object

if TYPE_CHECKING:
    from olmo_cli.train.loop import StopReason, Trainer

__all__ = ["Checkpointer", "LATEST", "LATEST_UNSHARDED", "checked_lists"]

Kind = Literal["regular", "unsharded", "ephemeral"]
LATEST = "latest"
LATEST_UNSHARDED = "latest-unsharded"
_LEFTOVER = re.compile(r"^(step\d+(-unsharded)?-tmp|\.step\d+(-unsharded)?\.(deleting|old)-[0-9a-f]+)$")
_LIST_KEYS: dict[Kind, str] = {
    "regular": "checkpoints",
    "unsharded": "unsharded_checkpoints",
    "ephemeral": "ephemeral_checkpoints",
}


class Checkpointer(Callback):
    name = "checkpointer"

    def __init__(
        self, run_dir: Path, config_yaml: str, events: EventSink, *, overwrite: bool = False
    ) -> None:
        self.run_dir = run_dir
        self.config_yaml = config_yaml
        self.events = events
        self.overwrite = overwrite
        self.saved: dict[Kind, list[str]] = {"regular": [], "unsharded": [], "ephemeral": []}
        self.last_path: Path | None = None
        self.observers: list[Any] = []  # told `saved(path)` and `deleted(name)` on the main rank (uploads)

    # ---- hooks ------------------------------------------------------------------------------------

    def on_start(self, trainer: Trainer) -> None:
        if trainer.world.is_main:
            remove_leftovers(self.run_dir)
        for kind, names in self.saved.items():  # a restored list may name checkpoints deleted since
            self.saved[kind] = [n for n in names if self._counts(n)]

    def on_step(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        cfg, step = trainer.cfg, trainer.state.global_step

        def due(interval: int | None, keep: int = -1) -> bool:
            return interval is not None and keep != 0 and step % interval == 0

        regular = due(cfg.save_interval, cfg.save_num_checkpoints_to_keep)
        if regular:
            self.save(trainer, "regular")
        elif due(cfg.save_interval_ephemeral):
            self.save(trainer, "ephemeral")
        if due(cfg.save_interval_unsharded, cfg.save_num_unsharded_checkpoints_to_keep):
            self.save(trainer, "unsharded")

    def on_end(self, trainer: Trainer, reason: StopReason) -> None:
        cfg = trainer.cfg
        if trainer.state.global_step == 0:
            return
        allowed = {
            "regular": cfg.save_num_checkpoints_to_keep != 0,
            "unsharded": cfg.save_num_unsharded_checkpoints_to_keep != 0,
        }
        if reason == "interrupted":
            preferred = ["regular", "unsharded"]
        elif cfg.save_interval_unsharded is not None:
            preferred = ["unsharded", "regular"]
        else:
            preferred = ["regular", "unsharded"]
        kind = next((k for k in preferred if allowed[k]), None)
        if kind is not None and not self._saved_at(trainer.state.global_step):
            self.save(trainer, kind)  # type: ignore[arg-type]

    def on_error(self, trainer: Trainer, error: Exception) -> None:
        """A failed run (disk full, a damaged batch, NaN loss): remove what a save cut short left, and
        say which complete checkpoint a resume would continue from."""
        if not trainer.world.is_main:
            return
        remove_leftovers(self.run_dir)
        newest = find_latest_checkpoint(self.run_dir)
        if newest is not None:
            self.events(
                Message(
                    f"the run failed at step {trainer.state.global_step}; its newest checkpoint is "
                    f"{newest} (`olmo resume {self.run_dir}` continues from it)",
                    level="warning",
                )
            )

    def state_dict(self) -> dict[str, Any]:
        return {key: list(self.saved[kind]) for kind, key in _LIST_KEYS.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes lists that `checked_lists` admitted; anything else in them is dropped, never used."""
        for kind, key in _LIST_KEYS.items():
            names = state.get(key)
            if isinstance(names, list):
                self.saved[kind] = [n for n in names if isinstance(n, str) and parse_step(n) is not None]

    def train_pt_entries(self, trainer: Trainer) -> dict[str, Any]:
        # Upstream lists the checkpoint directories as paths.
        return {key: [self.run_dir / n for n in self.saved[kind]] for kind, key in _LIST_KEYS.items()}

    # ---- saving -----------------------------------------------------------------------------------

    def _saved_at(self, step: int) -> bool:
        names = {checkpoint_dir_name(step, unsharded=u) for u in (False, True)}
        return any(n in names for saved in self.saved.values() for n in saved)

    def save(self, trainer: Trainer, kind: Kind) -> Path:
        """Writes a checkpoint of `kind` at the current step (collective), then applies retention.

        The lists are updated first, so the checkpoint's own trainer state names the checkpoints that
        will exist once it is complete; older ones are deleted only after it is.
        """
        world, step = trainer.world, trainer.state.global_step
        sharded = kind != "unsharded" and world.is_distributed
        name = checkpoint_dir_name(step, unsharded=not sharded)
        path = self.run_dir / name
        started = time.perf_counter()
        already = any(name in saved for saved in self.saved.values())
        before = {k: list(v) for k, v in self.saved.items()}
        if name not in self.saved[kind]:
            self.saved[kind].append(name)  # at one process the same directory may serve two kinds
        doomed = self._retain(trainer, kind)
        if not already:
            try:
                self._write(trainer, path, sharded)
            except BaseException:
                self.saved = before
                raise
        if world.is_main:
            for old in doomed:
                self._delete(old)
            link = LATEST_UNSHARDED if name.endswith(UNSHARDED_SUFFIX) else LATEST
            point_link(self.run_dir / link, name)
        barrier(world)
        self.last_path = path
        trainer.speed.reset()  # the save's time must not count as a slow training step
        if world.is_main and not already:
            self.events(CheckpointSaved(step, path, sharded, time.perf_counter() - started))
            for observer in self.observers:
                observer.saved(path)
        return path

    def _write(self, trainer: Trainer, path: Path, sharded: bool) -> None:
        state = trainer.train_pt()
        if sharded:
            from olmo_cli.checkpoint.sharded import write_sharded

            write_sharded(
                path,
                model=trainer.model,
                optim=trainer.optim,
                trainer_state=state,
                config_yaml=self.config_yaml,
                world=trainer.world,
                overwrite=self.overwrite,
            )
            return
        from olmo_cli.checkpoint.unsharded import write_unsharded
        from olmo_cli.train.optim_state import upstream_optimizer_state
        from olmo_cli.train.parallelize import full_model_state

        # Both are collective for a sharded model: every rank gathers, rank 0 writes.
        model_state = full_model_state(trainer.model)
        optim_state = upstream_optimizer_state(trainer.optim)
        error = None
        if trainer.world.is_main:
            try:
                write_unsharded(
                    path, model_state, optim_state, state, self.config_yaml, overwrite=self.overwrite
                )
            except Exception as e:  # re-raised below once the other ranks know
                error = e
        failed = broadcast_object(error is not None, trainer.world)
        if error is not None:
            raise error
        if failed:
            from olmo_cli.errors import CheckpointError

            raise CheckpointError(f"writing {path} failed on rank 0")

    def _retain(self, trainer: Trainer, kind: Kind) -> list[str]:
        """Drops what retention removes from the lists and returns it. Every rank keeps the lists (they
        are in each rank's trainer state); only the main rank deletes the directories."""
        cfg = trainer.cfg
        doomed: list[str] = []
        if kind == "regular":
            doomed += self.saved["ephemeral"]
            self.saved["ephemeral"] = []
        keep = {
            "regular": cfg.save_num_checkpoints_to_keep,
            "unsharded": cfg.save_num_unsharded_checkpoints_to_keep,
            "ephemeral": 1,
        }[kind]
        names = self.saved[kind]
        while keep > 0 and len(names) > keep:
            doomed.append(names.pop(0))
        return doomed

    def _counts(self, name: str) -> bool:
        """Whether a restored list's `name` still counts for retention: a checkpoint here, or, when the
        run uploads (observers), one not here that its store may hold (a run continued from its uploads
        on another machine, or a local copy removed by hand)."""
        if is_checkpoint_of(self.run_dir, name):
            return True
        return (
            bool(self.observers)
            and not (self.run_dir / name).exists()
            and not (self.run_dir / name).is_symlink()
        )

    def _delete(self, name: str) -> None:
        if any(name in saved for saved in self.saved.values()):
            return  # still listed as another kind (one process: a regular checkpoint is unsharded too)
        if not is_checkpoint_of(self.run_dir, name):
            # Retention deletes only this run directory's own checkpoint directories. One listed that is
            # not here (a run continued on another machine from its uploads) may still be uploaded.
            if self._counts(name):
                for observer in self.observers:
                    observer.deleted(name)
            return
        path = self.run_dir / name
        # Renamed first, so a kill while deleting leaves a hidden leftover, not a partial checkpoint.
        doomed = self.run_dir / f".{name}.deleting-{secrets.token_hex(4)}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        for link in (LATEST, LATEST_UNSHARDED):
            target = self.run_dir / link
            if target.is_symlink() and os.readlink(target) == name:
                target.unlink()
        for observer in self.observers:
            observer.deleted(name)


def checked_lists(state: Any, source: str) -> dict[str, list[str]]:
    """The checkpointer's lists from a trainer state, each entry checked to be the name of a checkpoint
    directly inside the run directory (`step40`, `step40-unsharded`). Raises CheckpointError naming the
    field otherwise: a name such as `../other-run` would make retention delete outside the run."""
    if not isinstance(state, dict):
        return {}
    out: dict[str, list[str]] = {}
    for key in _LIST_KEYS.values():
        names = state.get(key)
        if names is None:
            continue
        if not isinstance(names, list):
            raise CheckpointError(
                f"{source}: callbacks.checkpointer.{key} is a {type(names).__name__}, not a list",
                hint="the trainer state is damaged; resume from another checkpoint",
            )
        for name in names:
            if not isinstance(name, str) or parse_step(name) is None:
                shown = repr(name)[:80]
                raise CheckpointError(
                    f"{source}: callbacks.checkpointer.{key} names {shown}, which is not a checkpoint "
                    "directory name (stepN or stepN-unsharded); refused",
                    hint="a checkpoint may only list checkpoints directly inside its own run directory; this "
                    "one is damaged or was crafted to reach directories elsewhere",
                )
        out[key] = list(names)
    return out


def is_checkpoint_of(run_dir: Path, name: str) -> bool:
    """Whether `run_dir/name` is one of the run's checkpoints: a checkpoint name, a real directory (not
    a symlink) directly inside `run_dir`, holding what a checkpoint holds."""
    if parse_step(name) is None:
        return False
    path = run_dir / name
    if path.is_symlink() or not path.is_dir():
        return False
    return any(
        (path / part).exists() for part in (CONFIG_FILE, "train.pt", SHARDED_MODEL_DIR, SHARDED_TRAIN_DIR)
    )


def point_link(link: Path, target_name: str) -> None:
    """Makes `link` a relative symlink to `target_name` (a sibling), replacing it atomically."""
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.symlink(target_name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)  # a filesystem without symlinks: the pointer is only a convenience


def remove_leftovers(run_dir: Path) -> list[str]:
    """Deletes what a killed run leaves: `step*-tmp` directories and half-deleted checkpoints."""
    removed = []
    if not run_dir.is_dir():
        return removed
    for path in run_dir.iterdir():
        if _LEFTOVER.match(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed
