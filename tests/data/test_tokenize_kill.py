"""kill -9 in the middle of `olmo data tokenize`, then the same command again: the result is byte-identical
to an uninterrupted run, and the killed run left nothing that looks complete but is not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _tokenize_helpers import BUILTIN, WORDS, dir_bytes

from olmo_cli.data.tokenize import TokenizeOptions, tokenize

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 20_000  # ~150 part files: the kill lands with most of them still to write


def _make_input(path: Path, documents: int = 30_000) -> None:
    rng = np.random.default_rng(0)
    words = np.array(WORDS)[rng.integers(0, len(WORDS), size=documents * 40)]
    lengths = rng.integers(5, 75, size=documents)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    with path.open("w", encoding="utf-8") as f:
        for i in range(documents):
            text = " ".join(words[starts[i] % len(words) : starts[i] % len(words) + lengths[i]])
            f.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")


def _command(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "olmo_cli", "data", "tokenize", str(inputs), "--tokenizer", BUILTIN,
        "--output", str(out), "--max-tokens-per-file", str(MAX_TOKENS), "--processes", "2", *extra,
    ]  # fmt: skip


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_kill_9_then_rerun_is_byte_identical(tmp_path):
    data = tmp_path / "docs.jsonl"
    _make_input(data)
    reference = tmp_path / "reference"
    tokenize([str(data)], BUILTIN, reference, TokenizeOptions(max_tokens_per_file=MAX_TOKENS, processes=1))
    expected = dir_bytes(reference)
    assert len(expected) > 100

    out = tmp_path / "out"
    first_record = out / ".olmo-tokenize" / "part-00000.json"
    proc = subprocess.Popen(
        _command(data, out, "--quiet"), cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: first_record.exists() or proc.poll() is not None, 60, "the first finished part")
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as `kill -9 PID` does
        proc.wait()
        # Its worker processes notice and exit on their own rather than wait forever for work.
        _wait_for(lambda: not _group_alive(proc.pid), 10, "the orphaned workers to exit")
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)

    assert not (out / "manifest.json").exists()
    # The bookkeeping and the lock file the killed run held (a stale lock the re-run takes over) are not
    # output; the re-run removes both.
    left = {
        name: content
        for name, content in dir_bytes(out).items()
        if not name.startswith(".olmo-tokenize") and name != ".olmo.lock"
    }
    assert left, "at least one finished part was kept"
    assert len(left) < len(expected) - 1, "the kill came before the end"
    for name, content in left.items():  # every file with a final name is whole
        assert content == expected[name], f"{name} has its final name but not its final content"

    again = subprocess.run(
        _command(data, out, "--json"), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed_files"] >= 1 and not summary["already_complete"]
    assert dir_bytes(out) == expected
