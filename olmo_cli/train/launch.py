"""`olmo train --nproc-per-node N`: re-run the same command as N processes on this node.

The process tree is `olmo` (the parent) -> `python -m olmo_cli.train.launch` (torchrun's agent, run
in-process by this module) -> N x `python -m olmo_cli <same arguments>` (the workers: RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address set, torchrun's `--standalone` local rendezvous on a free port).
Multi-node runs call torchrun directly (with --nnodes and a rendezvous endpoint); this is the one-node
shortcut, and what it adds over plain torchrun is that the job behaves like one process:

- Nothing outlives the parent. Each launched process asks the kernel for SIGKILL when its parent dies
  (Linux `PR_SET_PDEATHSIG`; a watchdog thread elsewhere), so `kill -9` of `olmo` takes the agent with it
  and the agent's death takes the workers: no orphan keeps training and races a later `olmo resume`.
- One error, one exit code. Every worker writes how it ended (exit code, and its OlmoError if any) to a
  report file the parent reads; no worker prints a user error, the parent prints the one that matters
  (rank 0's, else the lowest rank's) once and exits with its code, as a single process would. torchrun's
  own failure summary and log lines are not shown (they are with `--debug`).
- Signals: SIGINT and SIGTERM sent to the parent go to the agent once (it runs in its own session, so a
  terminal's Ctrl-C does not reach the workers twice), which relays them to every worker; they save a
  checkpoint and exit with the code for "stopped" (olmo_cli.train.signals), and so does the parent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from olmo_cli.errors import OlmoError

__all__ = [
    "LaunchOutcome",
    "RankReport",
    "die_with_parent",
    "join_launcher",
    "relaunch_with_torchrun",
    "run_workers",
    "strip_nproc_option",
    "torchrun_argv",
    "write_report",
]

_OPTION_NAMES = ("--nproc-per-node", "--nproc_per_node")
PARENT_ENV = "OLMO_LAUNCHED_BY_PID"  # the PID that a launched process must have as its parent
REPORTS_ENV = "OLMO_RANK_REPORTS"  # the directory where each worker records how it ended
_LAUNCHER_REPORT = "launcher.json"
_PR_SET_PDEATHSIG = 1


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
    "--nproc-per-node", "2"]`); its `--nproc-per-node` is removed. The arguments after the module name
    are torchrun's own.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be at least 1, got {nproc_per_node}")
    return [
        sys.executable,
        "-m",
        "olmo_cli.train.launch",
        "--standalone",
        "--nproc-per-node",
        str(nproc_per_node),
        "-m",
        "olmo_cli",
        *strip_nproc_option(argv),
    ]


def relaunch_with_torchrun(
    nproc_per_node: int,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    forwarded: list[int] | None = None,
) -> int:
    """Runs `torchrun_argv(...)` (with `env` added to ours) and returns its exit code; the signals it
    forwarded are appended to `forwarded`.

    The agent runs in its own session, so a Ctrl-C from the terminal reaches it only through us, once:
    SIGINT and SIGTERM sent to this process are forwarded to it, and it relays them to every worker
    (which then save a checkpoint and exit). Without the separate session each worker would get the
    terminal's SIGINT directly and a second one from the agent. As in one process, a second SIGTERM
    changes nothing (it is not forwarded) and a second SIGINT means "now": the agent exits at once and
    its workers die with it. The agent SIGKILLs workers that have not exited 30 s after relaying a
    signal.
    """
    child_env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
    child = subprocess.Popen(torchrun_argv(nproc_per_node, argv), start_new_session=True, env=child_env)
    sent: list[int] = forwarded if forwarded is not None else []

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None and not (signum == signal.SIGTERM and signum in sent):
            sent.append(signum)
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()  # resumed after each forwarded signal (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- how the job ended ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankReport:
    """How one worker ended: its exit code and, for a user error, the error as it would have shown it."""

    rank: int
    exit_code: int
    message: str | None = None
    details: tuple[str, ...] = ()
    hint: str | None = None

    def as_error(self) -> OlmoError:
        error = OlmoError(self.message or "", hint=self.hint, details=list(self.details))
        error.exit_code = self.exit_code
        return error

    @classmethod
    def parse(cls, data: Any) -> RankReport | None:
        if not isinstance(data, dict):
            return None
        rank, code, message = data.get("rank"), data.get("exit_code"), data.get("message")
        details, hint = data.get("details") or [], data.get("hint")
        if not (isinstance(rank, int) and isinstance(code, int) and 0 <= code <= 255):
            return None
        if not (message is None or isinstance(message, str)) or not (hint is None or isinstance(hint, str)):
            return None
        if not (isinstance(details, list) and all(isinstance(d, str) for d in details)):
            return None
        return cls(rank, code, message, tuple(details), hint)


@dataclass(frozen=True)
class LaunchOutcome:
    """What the parent reports: an exit code and either the one error to show, or (when a worker died
    without saying why, e.g. killed) a description of that failure."""

    exit_code: int
    error: RankReport | None = None
    failure: str | None = None
    interrupted: bool = False  # a second Ctrl-C stopped the job at once


_REPORTS_PREFIX = "olmo-ranks-"


def _remove_stale_reports() -> None:
    """Report directories of parents that were killed (kill -9 leaves no chance to clean up): those whose
    PID, in the name, no longer runs."""
    root = Path(tempfile.gettempdir())
    try:
        candidates = list(root.glob(f"{_REPORTS_PREFIX}*-*"))
    except OSError:
        return
    for path in candidates:
        pid = path.name[len(_REPORTS_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError, OSError):
            continue


def run_workers(nproc_per_node: int, argv: list[str], *, env: dict[str, str] | None = None) -> LaunchOutcome:
    """`relaunch_with_torchrun`, and how the job ended according to its workers' reports."""
    _remove_stale_reports()
    reports = Path(tempfile.mkdtemp(prefix=f"{_REPORTS_PREFIX}{os.getpid()}-"))
    forwarded: list[int] = []
    try:
        env = {**(env or {}), REPORTS_ENV: str(reports)}
        code = relaunch_with_torchrun(nproc_per_node, argv, env=env, forwarded=forwarded)
        outcome = _outcome(code, reports)
    finally:
        shutil.rmtree(reports, ignore_errors=True)
    if outcome.failure is not None and forwarded.count(signal.SIGINT) > 1:
        return LaunchOutcome(128 + signal.SIGINT, interrupted=True)
    return outcome


def _outcome(launcher_code: int, reports: Path) -> LaunchOutcome:
    ranks = sorted(
        (r for r in (_read_report(p) for p in reports.glob("rank*.json")) if r is not None),
        key=lambda r: r.rank,
    )
    errors = [r for r in ranks if r.message is not None]
    if errors:
        return LaunchOutcome(errors[0].exit_code, error=errors[0])
    main = next((r for r in ranks if r.rank == 0), None)
    if main is not None and main.exit_code != 0:  # e.g. stopped by a signal after saving
        return LaunchOutcome(main.exit_code)
    if launcher_code == 0:
        return LaunchOutcome(0)
    code = launcher_code if launcher_code > 0 else 128 - launcher_code
    return LaunchOutcome(code, failure=_launcher_failure(reports, code))


def _read_report(path: Path) -> RankReport | None:
    try:
        return RankReport.parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _launcher_failure(reports: Path, code: int) -> str:
    try:
        data = json.loads((reports / _LAUNCHER_REPORT).read_text(encoding="utf-8"))
        rank, pid, exitcode = int(data["rank"]), int(data["pid"]), int(data["exitcode"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"the worker processes failed (exit code {code})"
    if exitcode < 0:
        return f"rank {rank} (PID {pid}) was killed by {_signal_name(-exitcode)}"
    return f"rank {rank} (PID {pid}) failed with exit code {exitcode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def write_report(
    exit_code: int, *, message: str | None = None, details: list[str] | None = None, hint: str | None = None
) -> bool:
    """In a worker started by `run_workers`: records how this rank ends, for the parent. Returns whether
    it did (then the parent shows `message`, and this process should not)."""
    directory, rank = os.environ.get(REPORTS_ENV), os.environ.get("RANK")
    if not directory or not os.environ.get("WORLD_SIZE") or rank is None or not rank.isdigit():
        return False
    record = {"rank": int(rank), "exit_code": exit_code, "message": message, "details": details, "hint": hint}
    path = Path(directory) / f"rank{int(rank)}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return False  # the parent is gone or its directory with it: show the error ourselves
    return True


# ---- dying with the parent -----------------------------------------------------------------------------


def die_with_parent(expected_parent: int) -> None:
    """Makes this process die (SIGKILL) when its parent does; if the parent is already gone (it is not
    `expected_parent` any more), dies now.

    On Linux the kernel does it (PR_SET_PDEATHSIG, which fires when the parent *thread* that started us
    exits: our parents start children from their main thread). Elsewhere a daemon thread polls getppid.
    """
    if sys.platform.startswith("linux") and _set_pdeathsig(signal.SIGKILL):
        if os.getppid() != expected_parent:  # it died before the request was in place
            os.kill(os.getpid(), signal.SIGKILL)
        return
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == expected_parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="olmo-parent-watch", daemon=True).start()


def _set_pdeathsig(signum: int) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def join_launcher() -> None:
    """In a worker: when our launcher started it, die with the launcher."""
    expected = os.environ.get(PARENT_ENV, "")
    if os.environ.get("WORLD_SIZE") and expected.isdigit():
        die_with_parent(int(expected))


# ---- the launcher process --------------------------------------------------------------------------------


def _quiet_torchrun() -> None:
    """torchrun's log lines and failure summary repeat, in its own words, what the parent reports."""
    import logging

    for name in ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _write_launcher_report(rank: int, pid: int, exitcode: int) -> None:
    directory = os.environ.get(REPORTS_ENV)
    if directory:
        record = {"rank": rank, "pid": pid, "exitcode": exitcode}
        try:
            (Path(directory) / _LAUNCHER_REPORT).write_text(json.dumps(record), encoding="utf-8")
        except OSError:
            pass


def _launcher_main(args: list[str]) -> int:
    expected = os.environ.get(PARENT_ENV, "")
    if expected.isdigit():
        die_with_parent(int(expected))
    os.environ[PARENT_ENV] = str(os.getpid())  # the workers' parent is this process
    # torchrun's default for several processes per node, set here so that it does not announce it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "--debug" not in args:
        _quiet_torchrun()
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(args))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        _write_launcher_report(rank, failure.pid, failure.exitcode)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as e:  # relayed to the workers, which have exited
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(_launcher_main(sys.argv[1:]))
