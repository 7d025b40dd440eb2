"""Shared pieces of the data-input tests: running `olmo` with a deadline, the one-message check, what a
directory tree holds, and `olmo data tokenize` onto a real, nearly full tmpfs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cli._helpers import clean_env, olmo_executable

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


def can_mount_tmpfs() -> str | None:
    """None when this machine lets an unprivileged user namespace mount a tmpfs; else why not."""
    if shutil.which("unshare") is None:
        return "no `unshare` command"
    with tempfile.TemporaryDirectory() as mountpoint:
        probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mountpoint]
        try:
            proc = subprocess.run(probe, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unshare failed: {e}"
    return None if proc.returncode == 0 else f"unshare -rm mount: {proc.stderr.strip()}"


# Runs inside `unshare -rm` (a private mount namespace, so the tmpfs vanishes with it): mount, fill the
# disk but `free` bytes, tokenize (expected to fail), record what is left, free the space, tokenize again
# and copy the output out for the caller to compare.
_DRIVER = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
mnt = spec["mount"]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + spec["size"], "tmpfs", mnt], check=True)
st = os.statvfs(mnt)
with open(os.path.join(mnt, "filler"), "wb") as f:
    f.write(b"\0" * max(st.f_bavail * st.f_frsize - spec["free"], 0))
def run():
    p = subprocess.run(spec["argv"], capture_output=True, text=True, timeout=spec["timeout"], env=spec["env"])
    return {"rc": p.returncode, "stderr": p.stderr}
def listing():
    return sorted(os.path.relpath(os.path.join(d, n), mnt) for d, _, names in os.walk(mnt) for n in names)
first = run()
after_failure = listing()
os.unlink(os.path.join(mnt, "filler"))
second = run()
subprocess.run(["cp", "-a", os.path.join(mnt, "out"), spec["copy_to"]], check=True)
json.dump({"first": first, "after_failure": after_failure, "second": second}, open(spec["report"], "w"))
"""


def tokenize_on_full_tmpfs(
    work: Path, args: list[str], *, size: str = "2m", free: int = 48 * 1024, timeout: float = DEADLINE_S
) -> dict:
    """`olmo data tokenize ARGS -o MOUNT/out` on a tmpfs of `size` with about `free` bytes left, then
    again after the filler is removed; the report, with the output copied to `work/copied`."""
    mount = work / "mnt"
    mount.mkdir()
    report = work / "report.json"
    spec = {
        "mount": str(mount),
        "size": size,
        "free": free,
        "argv": [olmo_executable(), "data", "tokenize", *args, "-o", str(mount / "out")],
        "env": clean_env(XDG_CACHE_HOME=str(work / ".cache")),
        "timeout": timeout,
        "copy_to": str(work / "copied"),
        "report": str(report),
    }
    driver = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", _DRIVER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=3 * timeout,
        cwd=work,
    )
    assert driver.returncode == 0, driver.stderr
    assert not os.listdir(mount), "the tmpfs must have been private to the namespace"
    return json.loads(report.read_text())
