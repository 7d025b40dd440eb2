"""Dotted overrides: `--set model.n_layers=4 --set data.paths=[a.npy,b.npy] --set wandb=null`.

Values are read as YAML (numbers, booleans, null, `[a, b]` lists, `{k: v}` maps), like upstream's
OmegaConf dotlists, and with the same limits as a config file (no aliases, bounded nesting). Keys are
normalised as upstream does (`--data.num-workers` = `data.num_workers`). A key with no `=` is refused:
upstream reads it as `true`, which an integer field would then take as 1.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from olmo_cli.config.yamlio import parse_yaml
from olmo_cli.errors import ConfigError

MAX_KEY_PARTS = 64  # as deep as a config file may nest


def _shown(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    key, eq, raw = text.partition("=")
    key = key.strip().strip("-").replace("-", "_")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"override '{_shown(text)}' has no valid key",
            hint="write overrides as --set section.field=value, e.g. --set model.n_layers=4",
        )
    if len(key.split(".")) > MAX_KEY_PARTS:
        raise ConfigError(
            f"override '{_shown(text)}' names a key more than {MAX_KEY_PARTS} levels deep",
            hint="`olmo presets show tiny` prints every valid key",
        )
    if not eq:
        raise ConfigError(
            f"override '{_shown(text)}' has no value",
            hint=f"write --set {_shown(key)}=VALUE (for a switch: --set {_shown(key)}=true)",
        )
    value: Any = parse_yaml(raw, source=f"--set {_shown(text)}") if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Return a copy of `data` with the overrides applied, and the dotted keys they set."""
    result = copy.deepcopy(data)
    touched: set[str] = set()
    for text in overrides:
        parts, value = parse_override(text)
        _put(result, parts, value, text)
        touched.add(".".join(parts))
    return result, touched


def set_values(data: dict[str, Any], values: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Return a copy of `data` with typed values set at dotted keys (no YAML parsing: the string "2024"
    stays a string), and the keys set. Missing or null sections on the way are created."""
    result = copy.deepcopy(data)
    for key, value in values.items():
        _put(result, key.split("."), copy.deepcopy(value), key)
    return result, set(values)


def dotted_keys(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Every dotted key a mapping sets, sections included."""
    found = set()
    for key, value in data.items():
        found.add(prefix + str(key))
        if isinstance(value, Mapping):
            found |= dotted_keys(value, f"{prefix}{key}.")
    return found


def _put(result: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    node: Any = result
    for i, part in enumerate(parts[:-1]):
        node = _child(node, part, parts[: i + 1], text)
    _assign(node, parts[-1], value, text)


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
