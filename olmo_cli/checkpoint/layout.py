"""Where checkpoints live in a save folder, what they are called, and which file holds what.

Upstream names them `step{N}` (sharded) and `step{N}-unsharded`, with N the number of completed
optimizer steps, directly inside the save folder. Every file and directory name by which a checkpoint
kind is recognised is defined here (the kind detector is `olmo_cli.checkpoint.kind`).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "ADAPTER_FILE",
    "CONFIG_FILE",
    "HF_CONFIG_FILE",
    "MODEL_STEM",
    "QUANT_SETTINGS_FILE",
    "QUANT_WEIGHTS_FILE",
    "SHARDED_MARKERS",
    "SHARDED_MODEL_DIR",
    "SHARDED_TRAIN_DIR",
    "TOKENIZER_FILE",
    "UNSHARDED_SUFFIX",
    "checkpoint_dir_name",
    "find_latest_checkpoint",
    "hint_previous_checkpoint",
    "parse_step",
    "resolve_state_file",
]

UNSHARDED_SUFFIX = "-unsharded"
_CHECKPOINT_NAME = re.compile(r"^step(?P<step>\d+)(?P<unsharded>-unsharded)?$")

CONFIG_FILE = "config.yaml"  # the run's config, in every native checkpoint
TOKENIZER_FILE = "tokenizer.json"  # a tokenizer stored with a checkpoint wins over config.tokenizer
MODEL_STEM = "model"  # model.safetensors or model.pt (unsharded)
SHARDED_MODEL_DIR = "model_and_optim"  # our sharded checkpoints: torch.distributed.checkpoint's files
SHARDED_TRAIN_DIR = "train"  # our sharded checkpoints: train/rank{R}.pt
# What a sharded checkpoint directory holds instead of a model file: ours (model_and_optim/), upstream's
# legacy sharded layout (rank{R}.pt) and OLMo-core's (model/).
SHARDED_MARKERS = (SHARDED_MODEL_DIR, "rank0.pt", MODEL_STEM)
HF_CONFIG_FILE = "config.json"  # a Hugging Face model directory
QUANT_SETTINGS_FILE = "quantization.json"  # a checkpoint written by `olmo quantize`
QUANT_WEIGHTS_FILE = "quantized.safetensors"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA adapter (with its settings and base in the metadata)


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


def _previous_checkpoint(path: Path) -> Path | None:
    """The checkpoint beside `path` with the highest step below its step, if any."""
    step = parse_step(path.name)
    folder = path.parent
    if step is None or not folder.is_dir():
        return None
    best: tuple[int, bool] | None = None
    found: Path | None = None
    for candidate in folder.iterdir():
        match = _CHECKPOINT_NAME.match(candidate.name)
        if match is None or not candidate.is_dir() or int(match["step"]) >= step:
            continue
        rank = (int(match["step"]), match["unsharded"] is None)
        if best is None or rank > best:
            best, found = rank, candidate
    return found


def hint_previous_checkpoint(error: Exception, path: Path) -> None:
    """Adds to a CheckpointError about `path` (a `stepN` directory in a run folder) which checkpoint to
    fall back to: a newest checkpoint cut short (disk full, a kill during a copy) is the usual cause."""
    previous = _previous_checkpoint(Path(path))
    if previous is None or not hasattr(error, "hint"):
        return
    error.hint = (
        f"{Path(path).name} may be incomplete or damaged; use the previous checkpoint, {previous} (to "
        f"continue the run from it: olmo resume {previous.parent} --load-path {previous})"
    )


def resolve_state_file(directory: Path, stem: str) -> Path | None:
    """Upstream's loader rule: `stem.safetensors` if present, else `stem.pt`, else None."""
    for suffix in (".safetensors", ".pt"):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None
