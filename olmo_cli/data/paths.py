"""What a data item a user gives (a `--data` value, an entry of `data.paths`) stands for: token files.

- a token directory written by `olmo data tokenize` (it has `manifest.json`): its token files in
  manifest order, with their label masks and document counts;
- any other directory: its `*.npy` files, sorted by name (label masks, `*.mask.npy`, left out);
- a glob (`data/part-*.npy`): the matches, sorted, each expanded by these rules;
- a local file, or an http(s) URL: itself (URLs are not listed or checked here; their size is read
  when a dataset opens them).
Upstream's own configs list plain files and URLs, so for them expansion is the identity.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_cli.errors import DataError, UsageError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "olmo-tokens/1"
MASK_SUFFIX = ".mask.npy"
URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "r2://", "hf://", "weka://")
_GLOB_CHARS = set("*?[")


def is_url(item: str) -> bool:
    return item.startswith(URL_SCHEMES)


@dataclass(frozen=True)
class Manifest:
    """The parts of a token directory's manifest.json that reading the data needs."""

    directory: Path
    dtype: str
    tokenizer: dict[str, Any]
    documents: int | None
    tokens: int | None
    files: tuple[dict[str, Any], ...]

    @property
    def eos_token_id(self) -> int | None:
        value = self.tokenizer.get("eos_token_id")
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class TokenFile:
    """One token file to read: where it is, its label mask, and what its manifest says about it."""

    path: str
    label_mask: str | None = None
    manifest: Manifest | None = None
    documents: int | None = None


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest of a token directory, or None when it has none."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON: {e}", hint="re-run `olmo data tokenize`") from e
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(
            f"{path} has format {found!r}, expected {MANIFEST_FORMAT!r}",
            hint="this olmo reads token directories written by `olmo data tokenize`",
        )
    files = raw.get("files")
    if raw.get("dtype") not in ("uint16", "uint32") or not isinstance(files, list):
        raise DataError(f"{path} lacks a valid 'dtype' (uint16 or uint32) or 'files' list")
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DataError(f"{path}: files[{i}] has no 'path'")
    tokenizer = raw.get("tokenizer")
    return Manifest(
        directory=directory,
        dtype=raw["dtype"],
        tokenizer=tokenizer if isinstance(tokenizer, dict) else {},
        documents=raw.get("documents") if isinstance(raw.get("documents"), int) else None,
        tokens=raw.get("tokens") if isinstance(raw.get("tokens"), int) else None,
        files=tuple(files),
    )


def expand_data_paths(items: Sequence[str]) -> list[TokenFile]:
    """Every token file the items name, in order; a DataError for an item that names nothing."""
    if isinstance(items, str):  # a lone string would be expanded character by character
        raise UsageError("data paths must be a list of paths, not one string")
    found: list[TokenFile] = []
    for item in items:
        found.extend(_expand_one(str(item)))
    return found


def _expand_one(item: str) -> list[TokenFile]:
    if is_url(item):
        return [TokenFile(item)]
    path = Path(item).expanduser()
    if path.is_dir():
        return _expand_directory(path)
    if path.is_file():
        return [TokenFile(str(path))]
    if _GLOB_CHARS & set(item):
        matches = sorted(glob.glob(str(path)))
        if not matches:
            raise DataError(f"no files match {item}", hint="check the pattern; it is matched from the cwd")
        return [token_file for match in matches for token_file in _expand_one(match)]
    raise DataError(
        f"data path not found: {item}",
        hint="give token files, a directory from `olmo data tokenize`, a glob or an http(s) URL",
    )


def _expand_directory(directory: Path) -> list[TokenFile]:
    manifest = read_manifest(directory)
    if manifest is None:
        files = sorted(p for p in directory.glob("*.npy") if not p.name.endswith(MASK_SUFFIX))
        if not files:
            raise DataError(f"{directory} holds no *.npy token files and no {MANIFEST}")
        return [TokenFile(str(p)) for p in files]
    expanded = []
    for entry in manifest.files:
        token_path = directory / entry["path"]
        if not token_path.is_file():
            raise DataError(
                f"{token_path} is listed in {directory / MANIFEST} but missing",
                hint="the directory is incomplete: re-run the `olmo data tokenize` command that made it",
            )
        mask = entry.get("label_mask")
        documents = entry.get("documents")
        expanded.append(
            TokenFile(
                str(token_path),
                label_mask=str(directory / mask) if isinstance(mask, str) else None,
                manifest=manifest,
                documents=documents if isinstance(documents, int) else None,
            )
        )
    return expanded
