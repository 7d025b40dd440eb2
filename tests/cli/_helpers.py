"""Running the installed `olmo` entry point in a subprocess, as a user's shell does, or its `main` in
this process where a test needs only what it prints and exits with."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent
IMPORT_WATCH = Path(__file__).with_name("_import_watch.py")


def olmo_executable() -> str:
    """The console script pip installed next to this interpreter (not some other `olmo` on PATH)."""
    script = BIN_DIR / "olmo"
    if script.is_file():
        return str(script)
    found = shutil.which("olmo")
    assert found, "the `olmo` console script is not installed; run `pip install -e .`"
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without colour or completion variables that would change the output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"}
        and not k.startswith(("_OLMO_COMPLETE", "_TYPER_"))
    }
    env.update(NO_COLOR="1", TERM="dumb", PATH=f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    return env


def run_olmo(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [olmo_executable(), *args],
        cwd=cwd or ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_olmo_here(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`olmo ARGS` through the same entry point (`main`, with its one-line error rendering) in this
    process, in `cwd` and with the variables `env` set while it runs: the exit code, stdout and stderr a
    subprocess would give, without the second or two a fresh interpreter spends importing torch. For
    what needs a process of its own (signals, memory caps, imports, the console script) use `run_olmo`."""
    from olmo_cli.app import main

    out, err = io.StringIO(), io.StringIO()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    where = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    try:
        with where, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return subprocess.CompletedProcess(["olmo", *args], code, out.getvalue(), err.getvalue())


def run_watched(
    target: list[str], watch: list[str], tmp_path: Path, *, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run `olmo ARGS` (target ["olmo", *args]) or import modules (target ["import", *modules]) in a
    fresh interpreter; return the process and, for each watched top-level package that ended up
    imported, the module that imported it first."""
    report = tmp_path / f"imports-{len(list(tmp_path.glob('imports-*')))}.json"
    proc = subprocess.run(
        [sys.executable, str(IMPORT_WATCH), str(report), ",".join(watch), *target],
        cwd=ROOT,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.is_file(), f"the import watcher wrote no report:\n{proc.stderr}"
    return proc, json.loads(report.read_text())
