"""Commands run against a real, nearly full disk: a tmpfs mounted in a private mount namespace
(`unshare -rm`, so no privileges are needed and it vanishes with the namespace), filled but for a few
bytes, then freed, with the commands run before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.cli._helpers import clean_env, olmo_executable

# Inside the namespace: mount, fill all but `free` bytes, run `before`, list what the disk holds, delete
# the filler, run `after`, write a report. "{mnt}" in an argument is the mount point.
_DRIVER = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
mnt = spec["mount"]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + spec["size"], "tmpfs", mnt], check=True)
for d in spec["mkdirs"]:
    os.makedirs(os.path.join(mnt, d), exist_ok=True)
st = os.statvfs(mnt)
with open(os.path.join(mnt, ".filler"), "wb") as f:
    f.write(b"\0" * max(st.f_bavail * st.f_frsize - spec["free"], 0))
def run(argvs):
    out = []
    for argv in argvs:
        argv = [a.replace("{mnt}", mnt) for a in argv]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=spec["timeout"], env=spec["env"])
        out.append({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr})
    return out
def listing():
    found = []
    for d, dirs, names in os.walk(mnt):
        found += [os.path.relpath(os.path.join(d, n), mnt) for n in names + dirs]
    return sorted(found)
before = run(spec["before"])
full = listing()
os.unlink(os.path.join(mnt, ".filler"))
after = run(spec["after"])
if spec["copy_out"]:
    subprocess.run(["cp", "-a", os.path.join(mnt, spec["copy_out"][0]), spec["copy_out"][1]], check=True)
json.dump({"before": before, "full": full, "after": after, "final": listing()}, open(spec["report"], "w"))
"""


def tmpfs_unavailable() -> str | None:
    """None when a private tmpfs can be mounted here; else why not."""
    if shutil.which("unshare") is None:
        return "no `unshare` command"
    with tempfile.TemporaryDirectory() as mountpoint:
        probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mountpoint]
        try:
            proc = subprocess.run(probe, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unshare failed: {e}"
    return None if proc.returncode == 0 else f"unshare -rm mount: {proc.stderr.strip()}"


def olmo_on_full_disk(
    work: Path,
    before: list[list[str]],
    after: list[list[str]],
    *,
    free: int,
    size: str = "4m",
    mkdirs: tuple[str, ...] = (),
    timeout: float = 240,
    copy_out: tuple[str, Path] | None = None,
) -> dict:
    """Runs the `olmo` command lines `before` on a tmpfs with `free` bytes left, then `after` once the
    space is freed; returns their exit codes and output and the disk's listings (files and directories,
    relative to the mount; the filler is `.filler`). `copy_out`: (path on the disk, destination) to copy
    out at the end."""
    mount = work / "mnt"
    mount.mkdir()
    report = work / "full-disk-report.json"
    exe = olmo_executable()
    spec = {
        "mount": str(mount),
        "size": size,
        "free": free,
        "mkdirs": list(mkdirs),
        "before": [[exe, *argv] for argv in before],
        "after": [[exe, *argv] for argv in after],
        "env": clean_env(XDG_CACHE_HOME=str(work / ".cache")),
        "timeout": timeout,
        "report": str(report),
        "copy_out": [copy_out[0], str(copy_out[1])] if copy_out else None,
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
