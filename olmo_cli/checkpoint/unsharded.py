"""Upstream's unsharded checkpoint directory (`step{N}-unsharded/`), written and read.

Contents (docs/format.md §4.2): `config.yaml`; `model.safetensors` or `model.pt`; `optim.safetensors`
or `optim.pt`; `train.pt` (`other.pt` in very old checkpoints). The loader prefers `X.safetensors` over
`X.pt`. The `.safetensors` files use upstream's key encoding (`olmo_safetensors`); every pickle is read
with the restricted loaders of `safe_pickle`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from olmo_cli.atomic import disk_full_error, fsync_dir, is_disk_full
from olmo_cli.checkpoint._files import fsync_file
from olmo_cli.checkpoint.layout import CONFIG_FILE, SHARDED_MARKERS, parse_step, resolve_state_file
from olmo_cli.checkpoint.model_state import check_model_state, normalize_model_state
from olmo_cli.checkpoint.olmo_safetensors import compact, load_olmo_safetensors, save_olmo_safetensors
from olmo_cli.checkpoint.optim_state import normalize_optim_state
from olmo_cli.checkpoint.safe_pickle import load_torch_weights, load_trainer_pickle, train_state_globals
from olmo_cli.checkpoint.trainer_state import batch_geometry, normalize_trainer_state
from olmo_cli.config.schema import ModelConfig
from olmo_cli.errors import CheckpointError

__all__ = ["UnshardedCheckpoint", "read_unsharded", "write_unsharded"]

TMP_SUFFIX = "-tmp"


@dataclass
class UnshardedCheckpoint:
    """What `read_unsharded` found. `optim` and `trainer` are None when not asked for or absent."""

    path: Path
    model: dict[str, torch.Tensor]
    """Flat {parameter name: fp32 tensor}, upstream key rewrites applied: loads into `OLMo` strictly."""
    optim: dict[str, Any] | None = None
    """{"state": {name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}, names as the model's."""
    trainer: dict[str, Any] | None = None
    """train.pt with the backward-compatible counter rules applied (see `trainer_state`)."""
    config_text: str | None = None
    config: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def step(self) -> int | None:
        """The trainer's global step, else the step in the directory name."""
        if self.trainer is not None:
            return int(self.trainer["global_step"])
        return parse_step(self.path.name)


# ---------------------------------------------------------------------------------------------------
# writing


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _tensors(state: Mapping[Any, Any]) -> dict[Any, Any]:
    return {
        k: _tensors(v) if isinstance(v, Mapping) else compact(v) if isinstance(v, torch.Tensor) else v
        for k, v in state.items()
    }


def _check_trainer_state(trainer_state: Mapping[str, Any]) -> None:
    """Refuse to write a train.pt our own reader would not load (it reads with weights_only)."""
    import io

    buffer = io.BytesIO()
    torch.save(dict(trainer_state), buffer)
    buffer.seek(0)
    try:
        with torch.serialization.safe_globals(train_state_globals()):
            torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TypeError(
            f"trainer state holds objects train.pt may not contain: {str(e).splitlines()[0]}"
        ) from e


def _write_contents(
    tmp: Path,
    model_state: Mapping[str, torch.Tensor],
    optim_state: Mapping[str, Any] | None,
    trainer_state: Mapping[str, Any] | None,
    config_yaml_text: str,
    use_safetensors: bool,
) -> None:
    (tmp / CONFIG_FILE).write_text(config_yaml_text, encoding="utf-8")
    fsync_file(tmp / CONFIG_FILE)
    parts = {"model": dict(model_state), "optim": optim_state}
    for stem, state in parts.items():
        if state is None:
            continue
        if use_safetensors:
            save_olmo_safetensors(tmp / f"{stem}.safetensors", state)
        else:
            _torch_save(_tensors(state), tmp / f"{stem}.pt")
    if trainer_state is not None:
        _torch_save(dict(trainer_state), tmp / "train.pt")


def _check_model_input(model_state: Mapping[str, torch.Tensor]) -> None:
    for key, value in model_state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                f"model state entry {key!r} must map a str to a tensor, not {type(value).__name__}"
            )


def write_unsharded(
    directory: Path | str,
    model_state: Mapping[str, torch.Tensor],
    optim_state: Mapping[str, Any] | None,
    trainer_state: Mapping[str, Any] | None,
    config_yaml_text: str,
    *,
    safetensors: bool = True,
    overwrite: bool = False,
) -> Path:
    """Writes an unsharded checkpoint at `directory` (e.g. `run/step40-unsharded`); returns its path.

    Everything is written into the sibling `<name>-tmp`, fsynced, and renamed into place last, so
    `directory` exists only complete. An existing non-empty `directory` is an error unless `overwrite`;
    then the old one is replaced only after the new one is complete.

    `optim_state` may be keyed by names or ids; its non-tensor leaves must be plain data. `trainer_state`
    may hold plain data, tensors, pathlib paths and numeric NumPy arrays (what `read_unsharded` admits);
    anything else is a TypeError here rather than an unreadable checkpoint later.
    """
    final = Path(directory)
    _check_model_input(model_state)
    if trainer_state is not None:
        _check_trainer_state(trainer_state)
    if final.exists() and not final.is_dir():
        raise CheckpointError(f"cannot write checkpoint {final}: a file of that name exists")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise CheckpointError(
            f"checkpoint {final} already exists",
            hint="choose another save folder, or allow overwriting (save_overwrite: true)",
        )
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if tmp.exists():  # left by a run that died mid-write; never a complete checkpoint
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_contents(tmp, model_state, optim_state, trainer_state, config_yaml_text, safetensors)
        fsync_dir(tmp)
        _move_into_place(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(final, state_bytes(model_state, optim_state)) from None
        raise
    fsync_dir(final.parent)
    return final


def state_bytes(*states: Any) -> int:
    """Bytes of every tensor in (nested) state dicts: about what writing them takes on disk."""
    total, stack = 0, list(states)
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _move_into_place(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    if not any(final.iterdir()):
        final.rmdir()
        os.replace(tmp, final)
        return
    # A directory cannot be renamed over a non-empty one: move the old one aside, then delete it.
    old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# reading


def _load_state_file(path: Path, what: str) -> Any:
    if path.suffix == ".safetensors":
        return load_olmo_safetensors(path, what=what)
    return load_torch_weights(path, what=what)


def _read_config(directory: Path, warnings: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    from olmo_cli.config.yamlio import parse_yaml, read_config_text

    path = directory / CONFIG_FILE
    if not path.is_file():
        warnings.append(f"{directory} has no config.yaml; the model config must come from elsewhere")
        return None, None
    text = read_config_text(path, error=CheckpointError)
    config = parse_yaml(text, source=str(path), error=CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a mapping of config sections")
    return text, config


def _read_model(directory: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    path = resolve_state_file(directory, "model")
    if path is None:
        sharded = any((directory / name).exists() for name in SHARDED_MARKERS)
        raise CheckpointError(
            f"{directory} has no model.safetensors or model.pt",
            hint="this looks like a sharded checkpoint; unshard it first"
            if sharded
            else "an unsharded checkpoint directory holds config.yaml, model.safetensors (or model.pt), "
            "optim.safetensors and train.pt",
        )
    return normalize_model_state(_load_state_file(path, f"model state {path.name}"), source=str(path))


def _read_optim(directory: Path, warnings: list[str]) -> dict[str, Any] | None:
    path = resolve_state_file(directory, "optim")
    if path is None:
        warnings.append(f"{directory} has no optimizer state (optim.safetensors / optim.pt)")
        return None
    optim, more = normalize_optim_state(
        _load_state_file(path, f"optimizer state {path.name}"), source=str(path)
    )
    warnings += more
    return optim


def _read_trainer(
    directory: Path, config: dict[str, Any] | None, warnings: list[str]
) -> dict[str, Any] | None:
    path = resolve_state_file(directory, "train") or resolve_state_file(directory, "other")
    if path is None:
        warnings.append(f"{directory} has no trainer state (train.pt)")
        return None
    if path.suffix == ".safetensors":
        raw = load_olmo_safetensors(path, what=f"trainer state {path.name}")
    else:
        raw, more = load_trainer_pickle(path, what=f"trainer state {path.name}")
        warnings += more
    batch, seq_len = batch_geometry(config)
    return normalize_trainer_state(
        raw, global_batch_size=batch, max_sequence_length=seq_len, source=str(path)
    )


def read_unsharded(
    directory: Path | str,
    *,
    load_optim: bool = True,
    load_trainer: bool = True,
    model_config: ModelConfig | None = None,
) -> UnshardedCheckpoint:
    """Reads an unsharded checkpoint; with `model_config`, checks the model keys and shapes against it.

    A missing optimizer or trainer file is a warning (the checkpoint may be weights-only); a missing
    directory or model file, a damaged file, or a model that does not fit `model_config` is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint directory {directory} does not exist"
            if not directory.exists()
            else f"checkpoint {directory} is not a directory",
            hint="give the path of a step directory such as run/step1000-unsharded",
        )
    warnings: list[str] = []
    config_text, config = _read_config(directory, warnings)
    model, more = _read_model(directory)
    warnings += more
    if model_config is not None:
        check_model_state(model, model_config, source=str(directory))
    optim = _read_optim(directory, warnings) if load_optim else None
    trainer = _read_trainer(directory, config, warnings) if load_trainer else None
    return UnshardedCheckpoint(directory, model, optim, trainer, config_text, config, warnings)
