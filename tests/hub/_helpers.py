"""Running downloads against the test server, in-process (engine) or as the `olmo` command."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from olmo_cli.hub.download import CheckpointPlan, DownloadOptions, download, plan_download
from olmo_cli.hub.events import DownloadEvent
from olmo_cli.hub.http import RetryPolicy
from olmo_cli.hub.index import IndexEntry
from tests.cli._helpers import ROOT, clean_env, olmo_executable

from ._server import Server

# Retries in milliseconds and a one-second read timeout, so fault tests take well under a second each.
FAST = RetryPolicy(attempts=5, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2.0, read_timeout_s=1.0)
OPTIONS = DownloadOptions(jobs=4, chunk_size=1 << 20, policy=FAST)


def entry(server: Server, step: int, prefix: str = "ckpt") -> IndexEntry:
    return IndexEntry(step, server.url(f"{prefix}/step{step}-unsharded/"), line=2)


def fetch(
    server: Server, steps: list[int], dest: Path, options: DownloadOptions = OPTIONS
) -> tuple[list[CheckpointPlan], list[DownloadEvent]]:
    events: list[DownloadEvent] = []
    plans = plan_download([entry(server, s) for s in steps], dest, options)
    download(plans, options, events.append)
    return plans, events


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*args: str, tmp: Path, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [olmo_executable(), "checkpoints", *args],
        cwd=ROOT,
        env=cli_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
        **popen,
    )


def cli_env(tmp: Path) -> dict[str, str]:
    # The index cache goes to the test's own directory, not the user's.
    return clean_env(XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="200", **{"HF_TOKEN": ""})


__all__ = ["FAST", "OPTIONS", "cli_env", "entry", "fetch", "files_under", "run_cli"]
