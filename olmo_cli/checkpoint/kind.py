"""What kind of checkpoint a path is, decided once, from the files on disk alone.

Kinds, in the order they are recognised:
  quantized  `quantization.json` (written by `olmo quantize`)
  hf         a Hugging Face model directory: `config.json` naming a `model_type`
  sharded    `model_and_optim/` (ours: torch.distributed.checkpoint files, at any world size)
  unsharded  `model.safetensors` or `model.pt` and none of the sharded layouts' files, whatever the
             directory is called (upstream decides by the `-unsharded` suffix alone, so an unsharded
             checkpoint copied to `stepN/` would be opened as sharded there)
  adapter    `adapter.safetensors` without model weights: a LoRA adapter (a LoRA run folder, or the file)
A run folder is none of these: `locate_checkpoint` takes its latest checkpoint. A `stepN[-unsharded]`
directory whose files say nothing (cut short, emptied) is taken by its name, as upstream does, so that its
reader says what is missing. A new family or format plugs in here: a name in `layout`, a rule below, a
reader in `olmo_cli.load.read`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from olmo_cli.checkpoint.layout import (
    ADAPTER_FILE,
    HF_CONFIG_FILE,
    MODEL_STEM,
    QUANT_SETTINGS_FILE,
    SHARDED_MARKERS,
    SHARDED_MODEL_DIR,
    UNSHARDED_SUFFIX,
    find_latest_checkpoint,
    parse_step,
    resolve_state_file,
)
from olmo_cli.errors import CheckpointError

__all__ = ["CheckpointKind", "Located", "checkpoint_kind", "is_hf_dir", "locate_checkpoint"]

CheckpointKind = Literal["unsharded", "sharded", "hf", "quantized", "adapter"]
_MAX_HF_CONFIG_BYTES = 1 << 20  # a transformers config.json is a few KB


@dataclass(frozen=True)
class Located:
    path: Path  # the checkpoint directory (or an adapter file)
    kind: CheckpointKind


def is_hf_dir(path: Path) -> bool:
    """A directory with a `config.json` naming a `model_type` (how transformers recognises one)."""
    config = path / HF_CONFIG_FILE
    if not config.is_file():
        return False
    from olmo_cli.untrusted import read_limited

    try:
        found = json.loads(read_limited(config, _MAX_HF_CONFIG_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # TooLarge and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(found, dict) and "model_type" in found


def checkpoint_kind(path: Path | str) -> CheckpointKind | None:
    """The kind of checkpoint `path` holds (see the module doc); None when its files name none."""
    path = Path(path)
    if path.is_file():  # only an adapter is a single file; its reader checks its format
        return "adapter" if path.suffix == ".safetensors" and path.stem != MODEL_STEM else None
    if not path.is_dir():
        return None
    if (path / QUANT_SETTINGS_FILE).is_file():
        return "quantized"
    if is_hf_dir(path):
        return "hf"
    if (path / SHARDED_MODEL_DIR).is_dir():
        return "sharded"
    if resolve_state_file(path, MODEL_STEM) is not None:
        return "sharded" if any((path / m).exists() for m in SHARDED_MARKERS) else "unsharded"
    if (path / ADAPTER_FILE).is_file():
        return "adapter"
    if parse_step(path.name) is not None:
        return "unsharded" if path.name.endswith(UNSHARDED_SUFFIX) else "sharded"
    return None


def locate_checkpoint(path: Path | str) -> Located:
    """The checkpoint `path` names and its kind: `path` itself, or a run folder's latest checkpoint.
    Raises CheckpointError for a path that is neither."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="check the path")
    kind = checkpoint_kind(path)
    if kind is not None and not (kind == "adapter" and path.is_dir() and _has_checkpoints(path)):
        return Located(path, kind)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(
            f"{path} is not a checkpoint: no model.safetensors, model.pt, {SHARDED_MODEL_DIR}/ or "
            "config.json, and no stepN/ checkpoint inside",
            hint="give a checkpoint directory (run/step1000-unsharded), a run folder, or a Hugging Face "
            "model directory",
        )
    return Located(latest, checkpoint_kind(latest) or "sharded")


def _has_checkpoints(path: Path) -> bool:
    """A LoRA run folder holds its adapter and checkpoints: the latest checkpoint is what it names."""
    return find_latest_checkpoint(path) is not None
