"""Shared pieces of the data-input tests: running `olmo` with a deadline, the one-message check, what a
directory tree holds, and `olmo data tokenize` onto a real, nearly full tmpfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli._helpers import clean_env, olmo_executable
from tests.security._full_disk import olmo_on_full_disk

DEADLINE_S = 60
BUILTIN = "builtin:tiny-bpe-4096"


def olmo(*args: str, cwd: Path, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess[str]:
    """The installed `olmo`, killed (and the test failed by TimeoutExpired) past `timeout` seconds."""
    env = clean_env(XDG_CACHE_HOME=str(cwd / ".cache"))
    return subprocess.run(
        [olmo_executable(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def one_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The exit code is `code`, stderr holds exactly one `error:` line and no traceback; that line."""
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def tree(root: Path, *, skip: tuple[str, ...] = (".cache",)) -> dict[str, int]:
    """Every file under `root` with its size, by relative path (the `skip` top-level names left out)."""
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip or not path.is_file():
            continue
        found[str(relative)] = path.stat().st_size
    return found


def tokenize_on_full_tmpfs(
    work: Path, args: list[str], *, size: str = "2m", free: int = 48 * 1024, timeout: float = DEADLINE_S
) -> dict:
    """`olmo data tokenize ARGS -o MOUNT/out` on a tmpfs of `size` with about `free` bytes left, then
    again after the filler is removed; the report, with the output copied to `work/copied`."""
    argv = ["data", "tokenize", *args, "-o", "{mnt}/out"]
    report = olmo_on_full_disk(
        work, [argv], [argv], free=free, size=size, timeout=timeout, copy_out=("out", work / "copied")
    )
    return {"first": report["before"][0], "after_failure": report["full"], "second": report["after"][0]}
