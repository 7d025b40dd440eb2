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

__all__ = ["MAX_COUNTER", "batch_geometry", "check_rng_state", "normalize_trainer_state"]

# Counters beyond this are not from a real run (2**53 tokens is ~1000x the largest published run) and
# would overflow int64 arithmetic further on.
MAX_COUNTER = 2**53
_MT_WORDS = 624  # Mersenne Twister state words, for Python's and NumPy's generators


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
    _check_fields(state, source)
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


def _bad(source: str, field: str, value: Any, expected: str) -> CheckpointError:
    # Only scalars are shown: the repr of a forged array could read memory it does not own.
    shown = repr(value) if isinstance(value, (int, float, str, type(None))) else "a value"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CheckpointError(
        f"{source}: the trainer state's {field!r} is {shown} ({type(value).__name__}); expected {expected}",
        hint="the checkpoint is damaged or was not written by a trainer; restore it with a fresh trainer "
        "state (--set reset_trainer_state=true) or use another checkpoint",
    )


def _check_counter(state: Mapping[str, Any], field: str, source: str, *, low: int = 0) -> None:
    if field not in state or (state[field] is None and field in _NULLABLE):
        return
    value = state[field]
    if _int(value) is None or not low <= value <= MAX_COUNTER:
        raise _bad(source, field, value, f"an integer from {low} to {MAX_COUNTER:,}")


_COUNTERS = (
    "global_step",
    "global_data_step",
    "epoch",
    "global_train_examples_seen_this_epoch",
    "global_train_examples_seen",
    "global_train_tokens_seen",
    "data_order_epoch",
)
_NULLABLE = {"epoch", "data_order_epoch"}


def _check_fields(state: Mapping[str, Any], source: str) -> None:
    """Type and range of every field the trainer acts on; the RNG states' exact shapes."""
    for field in _COUNTERS:
        _check_counter(state, field, source)
    if "world_size" in state:
        _check_counter(state, "world_size", source, low=1)
    order = state.get("data_order_file")
    if order is not None and not (isinstance(order, str) and 0 < len(order) <= 4096):
        raise _bad(source, "data_order_file", order, "a file name")
    for field in ("callbacks", "rng"):
        if state.get(field) is not None and not isinstance(state[field], Mapping):
            raise _bad(source, field, state[field], "a mapping")
    if isinstance(state.get("rng"), Mapping):
        check_rng_state(state["rng"], source)


def check_rng_state(rng: Mapping[str, Any], source: str) -> None:
    """Raises CheckpointError unless each present generator state is exactly what `random.getstate`,
    `np.random.get_state` and `torch.get_rng_state` produce, so restoring it cannot fail halfway."""
    if "python" in rng:
        _check_python_rng(rng["python"], source)
    if "numpy" in rng:
        _check_numpy_rng(rng["numpy"], source)
    if "torch" in rng:
        _check_torch_rng(rng["torch"], "rng.torch", source, exact=True)
    if rng.get("cuda") is not None:  # upstream writes None where the saving machine had no CUDA
        _check_torch_rng(rng["cuda"], "rng.cuda", source, exact=False)


def _check_python_rng(value: Any, source: str) -> None:
    expected = f"(3, a tuple of {_MT_WORDS + 1} 32-bit integers, a float or None) as random.getstate() gives"
    if not (isinstance(value, (tuple, list)) and len(value) == 3):
        raise _bad(source, "rng.python", value, expected)
    version, internal, gauss = value
    ok = (
        version == 3
        and _int(version) is not None
        and isinstance(internal, (tuple, list))
        and len(internal) == _MT_WORDS + 1
        and all(_int(w) is not None and 0 <= w < 2**32 for w in internal)
        and internal[-1] <= _MT_WORDS
        and (gauss is None or isinstance(gauss, float))
    )
    if not ok:
        raise _bad(source, "rng.python", value, expected)


def _check_numpy_rng(value: Any, source: str) -> None:
    import numpy as np

    expected = f"('MT19937', {_MT_WORDS} uint32 words, position, has_gauss, cached_gaussian)"
    if not (isinstance(value, (tuple, list)) and len(value) == 5):
        raise _bad(source, "rng.numpy", value, expected)
    name, words, pos, has_gauss, cached = value
    ok = (
        name == "MT19937"
        and isinstance(words, np.ndarray)
        and words.dtype == np.dtype(np.uint32)
        and words.shape == (_MT_WORDS,)
        and _int(pos) is not None
        and 0 <= pos <= _MT_WORDS
        and has_gauss in (0, 1)
        and isinstance(cached, (float, int))
        and not isinstance(cached, bool)
    )
    if not ok:
        raise _bad(source, "rng.numpy", value, expected)


def _check_torch_rng(value: Any, field: str, source: str, *, exact: bool) -> None:
    import torch

    size = torch.get_rng_state().numel() if exact else None
    expected = f"a 1-D uint8 tensor of {size} bytes" if exact else "a 1-D uint8 tensor"
    ok = (
        isinstance(value, torch.Tensor)
        and value.dtype == torch.uint8
        and value.dim() == 1
        and (value.numel() == size if exact else 0 < value.numel() <= 2**20)
    )
    if not ok:
        raise _bad(source, field, value, expected)
