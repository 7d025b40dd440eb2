"""The process group from torchrun's environment, the torchrun relaunch, and (slow, 2 gloo processes)
FSDP2 reproducing a 1-process run: same initial parameters, same losses for the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from olmo_cli.errors import UsageError
from olmo_cli.model.olmo import build_model
from olmo_cli.train import launch
from olmo_cli.train.launch import strip_nproc_option, torchrun_argv
from olmo_cli.world import (
    all_reduce_sum,
    barrier,
    broadcast_object,
    close_world,
    init_world,
)
from tests.train import _dist_worker as worker

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in _TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_without_torchrun(clean_env):
    world = init_world()
    assert (world.rank, world.world_size, world.local_rank) == (0, 1, 0)
    assert world.is_main and not world.is_distributed
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert world.device == expected
    assert not torch.distributed.is_initialized()
    # The collectives are identities on one process.
    t = torch.tensor([2.0])
    assert all_reduce_sum(t, world) is t and t.item() == 2.0
    assert broadcast_object({"a": 1}, world) == {"a": 1}
    barrier(world)
    close_world(world)


def test_world_size_one_under_torchrun_creates_no_group(clean_env):
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("RANK", "0")
    clean_env.setenv("LOCAL_RANK", "0")
    world = init_world("cpu")
    assert not world.is_distributed and not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK is not set"),
        (
            {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
            "outside 0..1",
        ),
        (
            {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
            "LOCAL_RANK=1",
        ),
        ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "MASTER_ADDR, MASTER_PORT not set"),
        ({"WORLD_SIZE": "two"}, "not an integer"),
        ({"WORLD_SIZE": "0"}, "at least 1"),
    ],
)
def test_inconsistent_environment_is_a_usage_error(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(UsageError, match=message) as err:
        init_world("cpu")
    assert "torchrun" in err.value.hint
    assert not torch.distributed.is_initialized()


# ---------------------------------------------------------------------------------------------------
# torchrun relaunch


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--preset", "tiny", "--nproc-per-node", "2", "--set", "seed=3"],
        ["train", "--nproc-per-node=2", "--preset", "tiny", "--set", "seed=3"],
        ["train", "--preset", "tiny", "--set", "seed=3", "--nproc_per_node", "2"],
    ],
)
def test_torchrun_argv(argv):
    assert torchrun_argv(2, argv) == [
        sys.executable,
        "-m",
        "olmo_cli.train.launch",  # torchrun's agent, run in-process by olmo's launcher
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "olmo_cli",
        "train",
        "--preset",
        "tiny",
        "--set",
        "seed=3",
    ]


def test_strip_keeps_values_that_only_look_like_the_option():
    argv = ["train", "--set", "run_name=--nproc-per-node", "--data", "a.npy"]
    assert strip_nproc_option(argv) == argv


def test_torchrun_argv_rejects_zero_processes():
    with pytest.raises(ValueError):
        torchrun_argv(0, ["train"])


_FORWARD_SCRIPT = """
import signal, sys, time
from pathlib import Path
from olmo_cli.train import launch

marker = Path(sys.argv[1])
child = (
    "import signal, sys, time\\n"
    "from pathlib import Path\\n"
    "got = []\\n"
    "signal.signal(signal.SIGINT, lambda s, f: got.append(s))\\n"
    f"Path({str(marker)!r}).write_text('ready')\\n"
    "deadline = time.time() + 20\\n"
    "while not got and time.time() < deadline: time.sleep(0.05)\\n"
    "time.sleep(0.3)\\n"  # a second (duplicate) signal would arrive in this window
    "sys.exit(40 + len(got))\\n"
)
launch.torchrun_argv = lambda n, argv: [sys.executable, "-c", child]
sys.exit(launch.relaunch_with_torchrun(2, ["train"]))
"""


def test_relaunch_forwards_sigint_once_and_returns_the_exit_code(tmp_path):
    marker = tmp_path / "ready"
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_FORWARD_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(Path(launch.__file__).parents[2])}
    parent = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the relaunched child never started"
    parent.send_signal(signal.SIGINT)
    assert parent.wait(timeout=30) == 41  # the child saw exactly one SIGINT, and its code came back


# ---------------------------------------------------------------------------------------------------
# two processes (gloo, CPU)


@pytest.mark.slow
def test_two_processes_initialize_the_same_full_parameters_as_one(tmp_path):
    worker.spawn(worker.job_full_params, 2, tmp_path, "one_in_two")
    result = torch.load(tmp_path / "params.pt")
    assert result["sum"] == 3.0 and result["received"] == {"from": 0}
    sharded = result["params"]
    reference = build_model(worker.tiny_config().model, "cpu", seed=worker.SEED).state_dict()
    assert list(sharded) == list(reference)
    for name, tensor in reference.items():
        assert torch.equal(sharded[name], tensor), name


@pytest.mark.slow
def test_two_process_fsdp_losses_equal_one_process(tmp_path, clean_env):
    steps = 4
    worker.spawn(worker.job_train, 2, tmp_path, steps)
    two = torch.load(tmp_path / "train.pt")
    worker.job_train(init_world("cpu"), tmp_path, steps)
    one = torch.load(tmp_path / "train.pt")
    assert len(one["losses"]) == steps
    assert one["losses"][-1] < one["losses"][0]  # it trains, so equal losses mean something
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-5)
    for name, tensor in one["params"].items():
        torch.testing.assert_close(two["params"][name], tensor, rtol=0, atol=1e-5, msg=name)
    for name, entry in one["optim"]["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(two["optim"]["state"][name][key], value, rtol=0, atol=1e-5)
