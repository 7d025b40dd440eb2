"""A checkpoint tree served by the test server, and downloads of it, in-process (engine) or as the
`olmo` command."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

from olmo_cli.hub.download import CheckpointPlan, DownloadOptions, download, plan_download
from olmo_cli.hub.events import DownloadEvent
from olmo_cli.hub.http import RetryPolicy
from olmo_cli.hub.index import IndexEntry
from tests._http_server import Server
from tests.cli._helpers import ROOT, clean_env, olmo_executable

# Retries in milliseconds and a one-second read timeout, so fault tests take well under a second each.
FAST = RetryPolicy(attempts=5, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2.0, read_timeout_s=1.0)
OPTIONS = DownloadOptions(jobs=4, chunk_size=1 << 20, policy=FAST)


UPSTREAM_FILES = {  # name -> size in the generated test tree
    "config.yaml": 700,
    "model.safetensors": 3 * (1 << 20) + 123,
    "optim.safetensors": 5 * (1 << 20) + 4567,
    "train.pt": 20_000,
}


def add_checkpoint(
    server: Server, step: int, files: dict[str, bytes] | None = None, *, prefix: str = "ckpt"
) -> dict[str, bytes]:
    """Serve `step{step}-unsharded/` under `prefix` (random contents unless given); returns the files."""
    rng = random.Random(step)
    files = files or {name: rng.randbytes(size) for name, size in UPSTREAM_FILES.items()}
    for name, data in files.items():
        server.add_bytes(f"{prefix}/step{step}-unsharded/{name}", data)
    return files


def add_index(server: Server, steps: list[int], *, path: str = "index.csv", prefix: str = "ckpt") -> str:
    rows = [f"{s},{server.url(f'{prefix}/step{s}-unsharded/')}" for s in steps]
    server.add_bytes(path, ("Step,Checkpoint Directory\n" + "\n".join(rows)).encode())
    return server.url(path)


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


def run_cli(
    *args: str, tmp: Path, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """`olmo checkpoints ARGS`, with `env` on top of the test's own environment."""
    return subprocess.run(
        [olmo_executable(), "checkpoints", *args],
        cwd=ROOT,
        env={**cli_env(tmp), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        **popen,
    )


def cli_env(tmp: Path) -> dict[str, str]:
    # The index cache goes to the test's own directory, not the user's.
    return clean_env(XDG_CACHE_HOME=str(tmp / "cache"), COLUMNS="200", **{"HF_TOKEN": ""})


__all__ = [
    "FAST",
    "OPTIONS",
    "UPSTREAM_FILES",
    "add_checkpoint",
    "add_index",
    "cli_env",
    "entry",
    "fetch",
    "files_under",
    "run_cli",
]
