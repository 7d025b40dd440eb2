"""Dotted overrides: `--set model.n_layers=4 --set data.paths=[a.npy,b.npy] --set wandb=null`.

Values are read as YAML (numbers, booleans, null, `[a, b]` lists, `{k: v}` maps), like upstream's
OmegaConf dotlists. Keys are normalised as upstream does (`--data.num-workers` = `data.num_workers`);
a key with no `=` means `true`.
"""

from __future__ import annotations

import copy
from typing import Any

from olmo_cli.config.yamlio import parse_yaml
from olmo_cli.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    key, eq, raw = text.partition("=")
    key = key.strip().strip("-").replace("-", "_")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override '{text}' has no valid key",
            hint="write overrides as --set section.field=value, e.g. --set model.n_layers=4",
        )
    value: Any = True if not eq else parse_yaml(raw, source=f"--set {text}") if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Return a copy of `data` with the overrides applied, and the dotted keys they set."""
    result = copy.deepcopy(data)
    touched: set[str] = set()
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = result
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], text)
        _assign(node, parts[-1], value, text)
        touched.add(".".join(parts))
    return result, touched


def _child(node: Any, part: str, path: list[str], text: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, text)]
    if not isinstance(node.get(part), (dict, list)):
        node[part] = {}  # null or missing sections are created, e.g. --set wandb.project=x
    return node[part]


def _assign(node: Any, part: str, value: Any, text: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, text)] = value
    else:
        node[part] = value


def _index(node: list[Any], part: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"override '{text}': '{part}' is not an index of a list with {len(node)} items",
            hint=f"use an index from 0 to {len(node) - 1}",
        )
    return int(part)
