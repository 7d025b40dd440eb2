"""Ways to forge the files of the trust-boundary tests' checkpoints (the `checkpoint` fixture of
tests/conftest.py: a copy of a small trained run), and a record of a directory tree to prove that nothing
outside a run changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.cli._helpers import run_olmo


def edit_train_pt(checkpoint: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Loads our own test-made train.pt (trusted here), lets `edit` change it, and writes it back."""
    path = checkpoint / "train.pt"
    state = torch.load(path, weights_only=False)
    edit(state)
    torch.save(state, path)


def tree_state(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every file, directory and link under `root` (outside `skip`) with its content hash or target."""
    out: dict[str, str] = {}
    skipped = [s.resolve() for s in skip]
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skipped]
        for name in dirnames + filenames:
            path = here / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def victims(root: Path) -> list[Path]:
    """Directories outside any run that a hostile checkpoint would like deleted: one plain, one shaped
    like a checkpoint (so only the checks on names and location protect it)."""
    plain = root / "victim"
    plain.mkdir()
    (plain / "precious.txt").write_text("do not delete")
    shaped = root / "step1-unsharded"
    shaped.mkdir()
    (shaped / "config.yaml").write_text("{}\n")
    (shaped / "train.pt").write_bytes(b"not really")
    return [plain, shaped]


def olmo(*args: str, cwd: Path) -> Any:
    return run_olmo(*args, cwd=cwd)


def assert_one_error(proc: Any, code: int, *needles: str) -> str:
    """The process failed with `code` and one `error:` message (no traceback) containing `needles`."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in text, text
    return text
