"""`olmo train --nproc-per-node N`: re-run the same command under torchrun on this node.

torchrun (torch.distributed.run) starts N copies of `python -m olmo_cli <same arguments>`, sets RANK,
WORLD_SIZE, LOCAL_RANK and the rendezvous address for each, restarts nothing, and relays signals to them.
Multi-node runs call torchrun directly (with --nnodes and a rendezvous endpoint); this is the one-node
shortcut, using torchrun's `--standalone` local rendezvous on a free port.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

__all__ = ["strip_nproc_option", "torchrun_argv", "relaunch_with_torchrun"]

_OPTION_NAMES = ("--nproc-per-node", "--nproc_per_node")


def strip_nproc_option(argv: list[str]) -> list[str]:
    """`argv` without `--nproc-per-node N` / `--nproc-per-node=N` (either spelling), so the relaunched
    processes do not relaunch again."""
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in _OPTION_NAMES:
            skip_next = True
            continue
        if arg.startswith(tuple(f"{name}=" for name in _OPTION_NAMES)):
            continue
        out.append(arg)
    return out


def torchrun_argv(nproc_per_node: int, argv: list[str]) -> list[str]:
    """The command that runs `olmo <argv>` as `nproc_per_node` processes on this node.

    `argv` is the olmo command line after the program name (e.g. `["train", "--preset", "tiny",
    "--nproc-per-node", "2"]`); its `--nproc-per-node` is removed.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc_per_node),
        "-m",
        "olmo_cli",
        *strip_nproc_option(argv),
    ]


def relaunch_with_torchrun(nproc_per_node: int, argv: list[str]) -> int:
    """Runs `torchrun_argv(...)` and returns its exit code.

    torchrun runs in its own session, so a Ctrl-C from the terminal reaches it only through us, once:
    SIGINT and SIGTERM sent to this process are forwarded to torchrun, which relays them to every
    worker (which then save a checkpoint and exit). Without the separate session each worker would get
    the terminal's SIGINT directly and a second one from torchrun. torchrun SIGKILLs workers that have not
    exited 30 s after relaying a signal.
    """
    child = subprocess.Popen(torchrun_argv(nproc_per_node, argv), start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()  # resumed after each forwarded signal (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
