"""Resolve the `${...}` interpolations upstream configs use, on plain YAML data.

Supported, as in upstream's OmegaConf setup: absolute key references (`${run_name}`,
`${model.d_model}`), `${oc.env:VAR}` and `${oc.env:VAR,default}`, and the path resolvers
`${path.glob:p1,p2}`, `${path.choose:a,b}` and `${path.last_checkpoint:dir}`. Arguments may nest
interpolations. A string that is exactly one interpolation keeps the referenced value's type.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from olmo_cli.errors import ConfigError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _find_close(text: str, start: int) -> int:
    """Index of the `}` closing the `${` that starts at `start`."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed '${{' in {text!r}")


def _split_args(text: str) -> list[str]:
    """Split resolver arguments on commas that are not inside a nested interpolation."""
    args, depth, current = [], 0, []
    i = 0
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            current.append("${")
            i += 2
            continue
        ch = text[i]
        if ch == "}" and depth:
            depth -= 1
        if ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    args.append("".join(current).strip())
    return args


def _last_checkpoint(folder: str) -> str:
    candidates = []
    for child in Path(folder).glob("step*"):
        digits = child.name.removeprefix("step").removesuffix("-unsharded")
        if child.is_dir() and digits.isdigit():
            # Highest step wins; on a tie upstream prefers the sharded directory.
            candidates.append((int(digits), not child.name.endswith("-unsharded"), str(child)))
    if not candidates:
        raise ValueError(f"no step* checkpoint directory in {folder}")
    return max(candidates)[2]


def _glob(*patterns: str) -> list[str]:
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"no file matches {pattern!r}")
        found.extend(matches)
    return found


def _choose(*options: str) -> str:
    for option in options:
        if _URL.match(option) or Path(option).exists():
            return option
    raise ValueError(f"none of {', '.join(options)} is a URL or an existing path")


def _env(name: str, *default: str) -> str:
    if name in os.environ:
        return os.environ[name]
    if default:
        return ",".join(default)
    raise ValueError(f"environment variable {name} is not set")


RESOLVERS: dict[str, Callable[..., Any]] = {
    "oc.env": _env,
    "path.glob": _glob,
    "path.choose": _choose,
    "path.last_checkpoint": _last_checkpoint,
}


class _AtPath(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class _Resolver:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.active: list[str] = []  # key paths being resolved, to report cycles

    def value(self, node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: self.value(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [self.value(v, f"{path}.{i}") for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            try:
                return self.string(node, path)
            except _AtPath:
                raise
            except ValueError as e:
                raise _AtPath(path, str(e)) from None
        return node

    def string(self, text: str, path: str) -> Any:
        start = text.find("${")
        if start == 0 and _find_close(text, 0) == len(text) - 1:
            return self.expression(text[2:-1], path)  # the whole value: keep its type
        out, i = [], 0
        while start != -1:
            end = _find_close(text, start)
            out.append(text[i:start])
            out.append(str(self.expression(text[start + 2 : end], path)))
            i = end + 1
            start = text.find("${", i)
        out.append(text[i:])
        return "".join(out)

    def expression(self, expr: str, path: str) -> Any:
        name, colon, rest = expr.partition(":")
        name = name.strip()
        if colon and name in RESOLVERS:
            args = [str(self.string(a, path)) if "${" in a else a for a in _split_args(rest)]
            return RESOLVERS[name](*args)
        if colon:
            raise ValueError(f"unknown resolver '{name}' (known: {', '.join(RESOLVERS)})")
        return self.reference(name)

    def reference(self, key: str) -> Any:
        if key in self.active:
            raise ValueError(f"interpolation cycle: {' -> '.join([*self.active, key])}")
        node: Any = self.root
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ValueError(f"'${{{key}}}' refers to a key the config does not have")
        self.active.append(key)
        try:
            return self.value(node, key)
        finally:
            self.active.pop()


def resolve_interpolations(data: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
    """Return a copy of `data` with every `${...}` resolved; errors name the key that holds it."""
    try:
        return _Resolver(data).value(data, "")
    except _AtPath as e:
        raise ConfigError(
            f"{source}: cannot resolve {e.path}: {e}",
            hint=f"set what it needs, or override the value with --set {e.path}=...",
        ) from None
