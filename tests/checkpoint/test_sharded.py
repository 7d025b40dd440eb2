"""Sharded (DCP) checkpoints: what a save holds comes back on load, in the same or another world size;
the final directory name appears only when the save is complete (kill -9 included); foreign pickles in
the metadata are refused without running."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from olmo_cli.checkpoint.sharded import MODEL_AND_OPTIM, OPTIM_GROUPS, read_sharded, write_sharded
from olmo_cli.errors import CheckpointError
from olmo_cli.train.optim_state import upstream_optimizer_state
from olmo_cli.train.parallelize import full_model_state
from olmo_cli.world import init_world
from tests.train import _dist_worker as worker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return init_world("cpu")


def trainer_state(step: int) -> dict:
    cfg = worker.tiny_config()
    return {
        "epoch": 0,
        "global_step": step,
        "global_train_examples_seen_this_epoch": step * worker.GLOBAL_BATCH,
        "global_train_tokens_seen": step * worker.GLOBAL_BATCH * cfg.model.max_sequence_length,
        "world_size": 1,
        "checkpoints": [Path(f"step{step}")],
        "rng": {"torch": torch.get_rng_state()},
    }


def save(path: Path, model, optim, world, *, step: int, config_yaml: str = "", **kwargs) -> Path:
    """write_sharded of `model` and `optim` with the trainer state of `step`."""
    state = trainer_state(step)
    return write_sharded(
        path, model=model, optim=optim, trainer_state=state, config_yaml=config_yaml, world=world, **kwargs
    )


def trained(world, steps: int):
    cfg = worker.tiny_config()
    model, optim = worker.build(cfg, world)
    for step in range(steps):
        worker.train_step(model, optim, worker.batch(step, cfg), world)
    return model, optim


def snapshot(model, optim) -> dict:
    # upstream_optimizer_state returns the live moments; deep-copy so later steps do not change it.
    return {"params": full_model_state(model), "optim": copy.deepcopy(upstream_optimizer_state(optim))}


def assert_same_state(got: dict, want: dict) -> None:
    assert list(got["params"]) == list(want["params"])
    for name, tensor in want["params"].items():
        assert torch.equal(got["params"][name], tensor), name
    assert got["optim"]["state"].keys() == want["optim"]["state"].keys()
    for name, entry in want["optim"]["state"].items():
        assert entry.keys() == got["optim"]["state"][name].keys()
        for key, value in entry.items():
            assert torch.equal(got["optim"]["state"][name][key], value), (name, key)
    # Hyper-parameters come back; lr and the `sharded` flag are the live run's by design.
    live_keys = ("lr", "sharded", "params", "param_names")
    for got_group, want_group in zip(
        got["optim"]["param_groups"], want["optim"]["param_groups"], strict=True
    ):
        assert {k: v for k, v in got_group.items() if k not in live_keys} == {
            k: v for k, v in want_group.items() if k not in live_keys
        }
        assert got_group["param_names"] == want_group["param_names"]


def test_round_trip_in_one_process_continues_identically(world, tmp_path):
    model, optim = trained(world, 2)
    path = save(tmp_path / "step2", model, optim, world, step=2, config_yaml="{}\n")
    assert path == tmp_path / "step2"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.yaml", MODEL_AND_OPTIM, OPTIM_GROUPS, "train"]
    )
    assert (path / "train" / "rank0.pt").is_file() and (path / MODEL_AND_OPTIM / ".metadata").is_file()
    assert not (tmp_path / "step2-tmp").exists()
    want = snapshot(model, optim)

    fresh, fresh_optim = worker.build(worker.tiny_config(), world)
    state = read_sharded(path, model=fresh, optim=fresh_optim, world=world)
    assert state["global_step"] == 2 and state["checkpoints"] == [Path("step2")]
    assert torch.equal(state["rng"]["torch"], trainer_state(2)["rng"]["torch"])
    assert_same_state(snapshot(fresh, fresh_optim), want)
    cfg = worker.tiny_config()
    assert worker.train_step(fresh, fresh_optim, worker.batch(2, cfg), world) == worker.train_step(
        model, optim, worker.batch(2, cfg), world
    )


def test_checkpoint_before_the_first_step_leaves_the_optimizer_untouched(world, tmp_path):
    # torch's get_state_dict would take a zero step to create the AdamW state (step becomes 1, which
    # changes every later bias correction); a step-0 checkpoint must not do that.
    model, optim = trained(world, 0)
    save(tmp_path / "step0", model, optim, world, step=0)
    assert not optim.state
    fresh, fresh_optim = worker.build(worker.tiny_config(), world)
    read_sharded(tmp_path / "step0", model=fresh, optim=fresh_optim, world=world)
    assert not fresh_optim.state
    cfg = worker.tiny_config()
    losses = [
        worker.train_step(m, o, worker.batch(s, cfg), world)
        for s in range(2)
        for m, o in ((model, optim), (fresh, fresh_optim))
    ]
    assert losses[0] == losses[1] and losses[2] == losses[3]


def test_model_only_load_and_existing_directory(world, tmp_path):
    model, optim = trained(world, 1)
    save(tmp_path / "step1", model, optim, world, step=1)
    with pytest.raises(CheckpointError, match="already exists"):
        save(tmp_path / "step1", model, optim, world, step=1)
    worker.train_step(model, optim, worker.batch(1, worker.tiny_config()), world)
    save(tmp_path / "step1", model, optim, world, step=1, overwrite=True)  # replaced by the newer weights
    fresh, _ = worker.build(worker.tiny_config(), world)
    read_sharded(tmp_path / "step1", model=fresh, optim=None, world=world)
    assert torch.equal(
        full_model_state(fresh)["transformer.wte.weight"], full_model_state(model)["transformer.wte.weight"]
    )


def test_a_different_model_is_refused_with_the_mismatched_shapes(world, tmp_path):
    model, optim = trained(world, 1)
    save(tmp_path / "step1", model, optim, world, step=1)
    other_cfg = worker.tiny_config(d_model=48)
    other, other_optim = worker.build(other_cfg, world)
    with pytest.raises(CheckpointError) as err:
        read_sharded(tmp_path / "step1", model=other, optim=other_optim, world=world)
    assert "transformer.wte.weight: (64, 32) in the checkpoint, (64, 48) in the model" in err.value.details


def test_trainer_state_that_could_not_be_read_back_is_refused_before_writing(world, tmp_path):
    model, optim = trained(world, 0)
    state = {**trainer_state(0), "callback": _Evil(tmp_path / "x")}
    with pytest.raises(TypeError, match="trainer state holds objects"):
        write_sharded(
            tmp_path / "step0", model=model, optim=optim, trainer_state=state, config_yaml="", world=world
        )
    assert not any(tmp_path.iterdir())


def test_not_a_sharded_checkpoint(world, tmp_path):
    model, _ = worker.build(worker.tiny_config(), world)
    with pytest.raises(CheckpointError, match="not a sharded checkpoint"):
        read_sharded(tmp_path, model=model, optim=None, world=world)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_metadata_pickle_is_not_run(world, tmp_path):
    model, optim = trained(world, 1)
    path = save(tmp_path / "step1", model, optim, world, step=1)
    marker = tmp_path / "pwned"
    (path / MODEL_AND_OPTIM / ".metadata").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError, match="not allowed in checkpoint metadata"):
        read_sharded(path, model=model, optim=optim, world=world)
    assert not marker.exists()


def test_pickled_entries_are_not_loaded(world, tmp_path):
    # A checkpoint that stores an object where the AdamW step should be: DCP would torch.load it
    # unrestricted; it must be refused instead.
    import torch.distributed.checkpoint as dcp

    model, optim = trained(world, 1)
    path = save(tmp_path / "step1", model, optim, world, step=1)
    marker = tmp_path / "pwned"
    state = {"model": {k: v.detach() for k, v in full_model_state(model).items()}}
    state["optim"] = {"state": {"transformer.wte.weight": {"step": _Evil(marker)}}}
    writer = dcp.FileSystemWriter(path / MODEL_AND_OPTIM, overwrite=True)
    dcp.save(state, storage_writer=writer, no_dist=True)
    with pytest.raises(CheckpointError, match="pickled object, not a tensor"):
        read_sharded(path, model=model, optim=optim, world=world)
    assert not marker.exists()


_KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from olmo_cli.checkpoint import sharded
from olmo_cli.world import init_world
from tests.checkpoint.test_sharded import trainer_state, trained
from tests.train import _dist_worker as worker

out, point = Path(sys.argv[1]), sys.argv[2]
world = init_world("cpu")
model, optim = trained(world, 1)
kwargs = {"model": model, "optim": optim, "config_yaml": "", "world": world}
sharded.write_sharded(out / "step1", trainer_state=trainer_state(1), **kwargs)
worker.train_step(model, optim, worker.batch(1, worker.tiny_config()), world)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

# "state": dies writing the trainer state, after the DCP files; "publish": right before the rename.
setattr(sharded, {"state": "_torch_save", "publish": "_move_into_place"}[point], die)
sharded.write_sharded(out / "step2", trainer_state=trainer_state(2), **kwargs)
"""


@pytest.mark.parametrize("point", ["state", "publish"])
def test_kill_9_during_a_save_leaves_no_directory_under_the_final_name(world, tmp_path, point):
    script = tmp_path / "save.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, str(script), str(tmp_path), point], env=env, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert not (tmp_path / "step2").exists()
    assert (tmp_path / "step2-tmp" / MODEL_AND_OPTIM / ".metadata").is_file()  # killed late in the save
    # The previous checkpoint is intact and loads.
    model, optim = worker.build(worker.tiny_config(), world)
    assert read_sharded(tmp_path / "step1", model=model, optim=optim, world=world)["global_step"] == 1
    # The next save at that step clears the leftovers.
    save(tmp_path / "step2", model, optim, world, step=2)
    assert not (tmp_path / "step2-tmp").exists() and (tmp_path / "step2" / "train" / "rank0.pt").is_file()


# ---------------------------------------------------------------------------------------------------
# across world sizes (slow: spawns 2 gloo processes)


@pytest.mark.slow
def test_two_process_checkpoint_loads_in_one_process(world, tmp_path):
    steps = 2
    worker.spawn(worker.job_save_sharded, 2, tmp_path, steps)
    reference = torch.load(tmp_path / "reference.pt")
    assert sorted(p.name for p in (tmp_path / f"step{steps}" / "train").iterdir()) == ["rank0.pt", "rank1.pt"]
    worker.job_load_sharded(world, tmp_path, steps)
    loaded = torch.load(tmp_path / "loaded-1.pt", weights_only=False)
    assert loaded["trainer"]["global_step"] == steps and loaded["trainer"]["rank"] == 0  # rank0.pt
    assert_same_state(loaded, reference)
    # The next step from the loaded state matches the 2-process run's next step.
    assert loaded["next_loss"] == pytest.approx(reference["next_loss"], abs=1e-5)


@pytest.mark.slow
def test_one_process_checkpoint_loads_in_two_processes(world, tmp_path):
    steps = 2
    worker.job_save_sharded(world, tmp_path, steps)
    reference = torch.load(tmp_path / "reference.pt")
    worker.spawn(worker.job_load_sharded, 2, tmp_path, steps)
    loaded = torch.load(tmp_path / "loaded-2.pt", weights_only=False)
    assert_same_state(loaded, reference)
    assert loaded["next_loss"] == pytest.approx(reference["next_loss"], abs=1e-5)
