"""`olmo data inspect --verify`: every file a token directory's manifest lists, re-hashed against the
sha256 `olmo data tokenize` recorded for it, and its size against the token count.

Sizes are checked whenever data is opened (`paths.entry_problem`); a checksum needs a read of every
byte, so it is checked only when asked. Manifests written before checksums were recorded have none:
their files are size-checked and reported as not hashable, which is not a failure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from olmo_cli.data.paths import MANIFEST, SHA256_KEYS, Manifest, entry_problems, is_url, read_manifest
from olmo_cli.errors import UsageError

READ_BYTES = 1 << 22

# progress(bytes hashed so far, bytes to hash in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Mismatch:
    path: str
    problem: str


@dataclass
class Verification:
    directories: list[str] = field(default_factory=list)
    files_checked: int = 0
    bytes_hashed: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    without_checksum: list[str] = field(default_factory=list)  # listed files the manifest has no sha256 for

    @property
    def ok(self) -> bool:
        return not self.mismatches


def verify_token_dirs(items: Sequence[str], progress: Progress | None = None) -> Verification:
    """Check every file the manifests of the token directories `items` list; never raises for a
    mismatch (they are collected), only for an item that is not a token directory."""
    manifests = [_manifest_of(item) for item in items]
    # (path, expected sha256 or None) for each listed file, and the size problems found without reading
    plan: list[tuple[Path, str | None]] = []
    problems: dict[Path, str] = {}
    for manifest in manifests:
        for entry in manifest.files:
            problems.update(entry_problems(manifest, entry))
            for key, name_key in SHA256_KEYS.items():
                name = entry.get(name_key)
                if isinstance(name, str):
                    plan.append((manifest.directory / name, entry.get(key)))
    result = Verification(directories=[str(m.directory) for m in manifests])
    hashed = [p for p, digest in plan if digest is not None and p not in problems and p.is_file()]
    total = sum(p.stat().st_size for p in hashed)
    for path, digest in plan:
        result.files_checked += 1
        if path in problems or not path.is_file():
            result.mismatches.append(Mismatch(str(path), problems.get(path, f"{path} is missing")))
        elif digest is None:
            result.without_checksum.append(str(path))
        else:
            actual = _sha256(path, result, total, progress)
            if actual != digest:
                problem = f"{path}: its sha256 is {actual}, but the manifest records {digest}"
                result.mismatches.append(Mismatch(str(path), problem))
    return result


def _manifest_of(item: str) -> Manifest:
    path = Path(item).expanduser()
    manifest = None if is_url(item) or not path.is_dir() else read_manifest(path)
    if manifest is None:
        raise UsageError(
            f"--verify checks token directories written by `olmo data tokenize`; {item} has no {MANIFEST}",
            hint="give the directory itself, or leave out --verify for raw token files",
        )
    return manifest


def _sha256(path: Path, result: Verification, total: int, progress: Progress | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ_BYTES):
            digest.update(block)
            result.bytes_hashed += len(block)
            if progress is not None:
                progress(result.bytes_hashed, total)
    return digest.hexdigest()
