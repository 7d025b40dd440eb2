"""Where checkpoints live in a save folder, what they are called, and which file holds what.

Upstream names them `step{N}` (sharded) and `step{N}-unsharded`, with N the number of completed
optimizer steps, directly inside the save folder.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "UNSHARDED_SUFFIX",
    "checkpoint_dir_name",
    "find_latest_checkpoint",
    "is_unsharded",
    "parse_step",
    "resolve_state_file",
]

UNSHARDED_SUFFIX = "-unsharded"
_CHECKPOINT_NAME = re.compile(r"^step(?P<step>\d+)(?P<unsharded>-unsharded)?$")
# What a sharded checkpoint directory holds instead of a model file (section 4.6 of the reference).
_SHARDED_MARKERS = ("rank0.pt", "model_and_optim", "model")


def checkpoint_dir_name(step: int, *, unsharded: bool) -> str:
    return f"step{step}{UNSHARDED_SUFFIX if unsharded else ''}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint directory name (`step40`, `step40-unsharded`); None for anything else."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match["step"]) if match else None


def find_latest_checkpoint(folder: Path | str) -> Path | None:
    """The checkpoint directory with the highest step in `folder`; on a tie the sharded one wins.

    Temporary directories (`step40-unsharded-tmp`) and other names are ignored. Unlike upstream, a lone
    `step0-unsharded` is found (upstream starts its search at step 0 and only lets a sharded one tie).
    """
    best: tuple[int, bool] | None = None
    best_path: Path | None = None
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in folder.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match is None or not path.is_dir():
            continue
        rank = (int(match["step"]), match["unsharded"] is None)  # True (sharded) sorts above False
        if best is None or rank > best:
            best, best_path = rank, path
    return best_path


def resolve_state_file(directory: Path, stem: str) -> Path | None:
    """Upstream's loader rule: `stem.safetensors` if present, else `stem.pt`, else None."""
    for suffix in (".safetensors", ".pt"):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def is_unsharded(path: Path | str) -> bool:
    """Whether `path` is (or names) an unsharded checkpoint.

    Upstream decides by the `-unsharded` suffix alone, so an unsharded checkpoint downloaded or copied to
    `stepN/` would be opened as a sharded one. We also look inside: a directory with `model.safetensors`
    or `model.pt` and none of the sharded layouts' files is unsharded whatever its name.
    """
    path = Path(str(path).rstrip("/\\") or str(path))
    if path.name.endswith(UNSHARDED_SUFFIX):
        return True
    if not path.is_dir() or resolve_state_file(path, "model") is None:
        return False
    return not any((path / marker).exists() for marker in _SHARDED_MARKERS)
