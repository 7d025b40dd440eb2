"""Trainer state is checked like any input: counters, world size and RNG states of a forged `train.pt`
are refused (exit 4, naming the file and the field) before anything uses them, and a forged NumPy
dtype is refused before its data is touched (unchecked, reading it crashes the interpreter)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from olmo_cli.checkpoint.unsharded import read_unsharded
from olmo_cli.errors import CheckpointError
from tests.cli._helpers import run_olmo_here
from tests.security._checkpoints import assert_one_error, edit_train_pt, olmo


def _python_state(change):
    version, internal, gauss = random.getstate()
    return change(version, list(internal), gauss)


CASES = {
    "global_step-huge": ("global_step", 2**70),
    "global_step-negative": ("global_step", -3),
    "global_step-bool": ("global_step", True),
    "epoch-float": ("epoch", 1.5),
    "epoch-string": ("epoch", "0"),
    "examples-huge": ("global_train_examples_seen_this_epoch", 10**30),
    "tokens-negative": ("global_train_tokens_seen", -1),
    "world_size-zero": ("world_size", 0),
    "order-file-int": ("data_order_file", 7),
    "rng-list": ("rng", [1, 2, 3]),
    "rng-python-short": ("rng.python", (3, (1, 2, 3), None)),
    "rng-python-big-word": ("rng.python", _python_state(lambda v, i, g: (v, tuple([2**40] + i[1:]), g))),
    "rng-python-version": ("rng.python", _python_state(lambda v, i, g: (99, tuple(i), g))),
    "rng-numpy-dtype": ("rng.numpy", ("MT19937", np.zeros(624, np.float64), 0, 0, 0.0)),
    "rng-numpy-shape": ("rng.numpy", ("MT19937", np.zeros(3, np.uint32), 0, 0, 0.0)),
    "rng-numpy-position": ("rng.numpy", ("MT19937", np.zeros(624, np.uint32), 10**9, 0, 0.0)),
    "rng-torch-dtype": ("rng.torch", torch.zeros(5056, dtype=torch.float32)),
    "rng-torch-size": ("rng.torch", torch.zeros(7, dtype=torch.uint8)),
    "rng-cuda-2d": ("rng.cuda", torch.zeros(4, 4, dtype=torch.uint8)),
}


def _forge(checkpoint, field, value) -> None:
    def edit(state: dict) -> None:
        if field.startswith("rng."):
            state["rng"][field.split(".", 1)[1]] = value
        else:
            state[field] = value

    edit_train_pt(checkpoint, edit)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_trainer_state_value_is_refused_naming_the_field(checkpoint, case):
    field, value = CASES[case]
    _forge(checkpoint, field, value)
    with pytest.raises(CheckpointError) as caught:
        read_unsharded(checkpoint, load_optim=False)
    message = str(caught.value)
    assert "train.pt" in message and (repr(field) if "." not in field else field) in message, message


def test_a_bad_counter_through_resume_is_one_message_with_exit_4(checkpoint, tmp_path):
    _forge(checkpoint, "global_step", 2**70)
    proc = run_olmo_here("resume", str(checkpoint.parent), "--set", "stop_at=3", cwd=tmp_path)
    assert_one_error(proc, 4, "train.pt", "'global_step'")


# A uint32 dtype whose pickled state claims a float64 field at offset 0 of its 4-byte items: NumPy
# accepts it, and reading the field reads past the end of the array's buffer.
FORGED_STATE = (3, "<", None, ("a",), {"a": (np.dtype("<f8"), 0)}, 4, 1, 0)


class _ForgingPickler(pickle.Pickler):
    """Writes the first dtype it meets (the RNG array's) with FORGED_STATE."""

    forged = False

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype) and not self.forged:
            self.forged = True
            return (np.dtype, ("<u4", False, True), FORGED_STATE)
        return NotImplemented


def _write_forged(checkpoint) -> None:
    state = torch.load(checkpoint / "train.pt", weights_only=False)
    state["rng"]["numpy"] = ("MT19937", np.zeros(624, np.uint32), 0, 0, 0.0)
    forging = type(pickle)("forging")
    forging.Pickler = _ForgingPickler
    torch.save(state, checkpoint / "train.pt", pickle_module=forging)


def test_the_forged_dtype_loads_without_the_check(checkpoint):
    """The forgery is real: torch's own restricted unpickler lets it through; only our check stops it."""
    from olmo_cli.checkpoint.safe_pickle import train_state_globals

    _write_forged(checkpoint)
    with torch.serialization.safe_globals(train_state_globals()):
        loaded = torch.load(checkpoint / "train.pt", weights_only=True)
    dtype = loaded["rng"]["numpy"][1].dtype
    assert dtype.fields is not None and dtype.itemsize == 4  # a float64 field in 4-byte items


def test_a_forged_numpy_dtype_is_refused_before_its_data_is_read(checkpoint, tmp_path):
    _write_forged(checkpoint)
    with pytest.raises(CheckpointError, match="NumPy array"):
        read_unsharded(checkpoint, load_optim=False)
    # In a process of its own: should the check fail, the crash must not take the test run with it.
    proc = olmo("resume", str(checkpoint.parent), "--set", "stop_at=3", cwd=tmp_path)
    assert proc.returncode != -11, "the forged array was read: the interpreter crashed"
    assert_one_error(proc, 4, "NumPy array", "refused")
