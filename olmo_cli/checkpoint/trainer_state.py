"""The trainer state (`train.pt`) with upstream's backward-compatible read rules applied.

Fields (upstream's names): `epoch`, `global_step`, `global_train_examples_seen_this_epoch`,
`global_train_tokens_seen`, `world_size`, `checkpoints`/`unsharded_checkpoints`/`ephemeral_checkpoints`
(lists of paths), `rng` ({python, numpy, torch, cuda}). Older files lack some counters; they are
derived from the step and the batch geometry exactly as upstream does when it loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from olmo_cli.errors import CheckpointError

__all__ = ["batch_geometry", "normalize_trainer_state"]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def batch_geometry(config: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(global_train_batch_size, model.max_sequence_length) from a TrainConfig dict, where present."""
    if not isinstance(config, Mapping):
        return None, None
    model = config.get("model")
    seq_len = _int(model.get("max_sequence_length")) if isinstance(model, Mapping) else None
    return _int(config.get("global_train_batch_size")), seq_len


def _need(value: int | None, name: str, field: str, source: str) -> int:
    if value is None:
        raise CheckpointError(
            f"{source} predates the '{field}' counter, and deriving it needs {name}, which the "
            "checkpoint's config.yaml does not give",
            hint="restore with a fresh trainer state, or add config.yaml from the run that wrote it",
        )
    return value


def normalize_trainer_state(
    raw: Any,
    *,
    global_batch_size: int | None,
    max_sequence_length: int | None,
    source: str = "train.pt",
) -> dict[str, Any]:
    """A copy of `raw` with `epoch`, `global_train_examples_seen_this_epoch` and
    `global_train_tokens_seen` always present, filled in as upstream does for older files:

    examples <- `global_train_examples_seen_this_epoch`, else `global_train_examples_seen`, else
    `global_data_step * B` (else `global_step * B`); tokens <- `global_train_tokens_seen`, else
    `(global_data_step, else global_step) * B * L`; a missing or null epoch is 0.
    """
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source} does not hold a trainer state dict (found {type(raw).__name__})")
    state = dict(raw)
    step = _int(state.get("global_step"))
    if step is None:
        raise CheckpointError(
            f"{source} has no integer 'global_step' (found {state.get('global_step')!r:.60})"
        )
    # Upstream reads `state.get("global_data_step", global_step)`: a present data step wins even at 0.
    data_step = _int(state.get("global_data_step"))
    data_step = step if data_step is None else data_step
    state["epoch"] = _int(state.get("epoch")) or 0

    examples = _int(state.get("global_train_examples_seen_this_epoch"))
    if examples is None:
        examples = _int(state.get("global_train_examples_seen"))
    if examples is None:
        examples = data_step * _need(global_batch_size, "global_train_batch_size", "examples seen", source)
    state["global_train_examples_seen_this_epoch"] = examples

    tokens = _int(state.get("global_train_tokens_seen"))
    if tokens is None:
        batch = _need(global_batch_size, "global_train_batch_size", "tokens seen", source)
        tokens = (
            data_step * batch * _need(max_sequence_length, "model.max_sequence_length", "tokens seen", source)
        )
    state["global_train_tokens_seen"] = tokens
    return state
