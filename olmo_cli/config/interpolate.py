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

from olmo_cli.errors import ConfigError, OlmoError

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
    def __init__(self, path: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.path = path
        self.hint = hint


# Bounds on what a config's interpolations may build. Upstream configs refer at most two keys deep and
# produce values of a few hundred characters; a hostile one doubles a value per key (`a1: ${a0}${a0}`),
# which reaches 2**60 characters in sixty lines.
MAX_VALUE_CHARS = 2**20  # one resolved value (characters of a string, items and characters of a list)
MAX_REFERENCE_DEPTH = 32  # keys in a chain a -> b -> c
MAX_NESTING = 128  # sections and nested interpolations being resolved at once, within Python's stack
MAX_WORK = 16 * 2**20  # characters and items produced while resolving one whole config (upstream's: <1 MiB)


def _growth_hint(path: str) -> str:
    return (
        "interpolations that repeat a value (${a}${a}) grow it exponentially; write the value out, "
        f"or override it with --set {path}=..."
    )


def _mib(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n} characters"


class _Resolver:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.active: list[str] = []  # key paths being resolved, to report cycles
        # key -> (value, size): each key is resolved once, and the result may hold one list or section in
        # several places (nothing after resolution changes it: it is only validated).
        self.resolved: dict[str, tuple[Any, int]] = {}
        self.nesting = 0
        self.work = 0

    def _charge(self, amount: int, path: str) -> None:
        self.work += amount
        if self.work > MAX_WORK:
            raise _AtPath(
                path,
                f"resolving the config's interpolations would produce more than {_mib(MAX_WORK)}, "
                "the limit for one config",
                _growth_hint(path),
            )

    def _enter(self, path: str) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise _AtPath(
                path,
                f"sections and interpolations nest deeper than {MAX_NESTING} levels",
                "a config nests a few levels deep; check that this is the file you meant",
            )

    def value(self, node: Any, path: str) -> Any:
        if isinstance(node, (dict, list)):
            self._enter(path)
            try:
                if self.active:  # a walk of the file's own data is bounded by the file's size
                    self._charge(len(node) + 1, path)
                if isinstance(node, dict):
                    return {k: self.value(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
                return [self.value(v, f"{path}.{i}") for i, v in enumerate(node)]
            finally:
                self.nesting -= 1
        if isinstance(node, str) and "${" in node:
            try:
                return self.string(node, path)
            except _AtPath:
                raise
            except ValueError as e:
                raise _AtPath(path, str(e)) from None
        return node

    def string(self, text: str, path: str) -> Any:
        self._enter(path)  # here, not in value(): resolver arguments nest through string() alone
        try:
            return self._string(text, path)
        finally:
            self.nesting -= 1

    def _string(self, text: str, path: str) -> Any:
        start = text.find("${")
        if start == 0 and _find_close(text, 0) == len(text) - 1:
            return self.expression(text[2:-1], path)  # the whole value: keep its type
        out, i, length = [], 0, 0
        while start != -1:
            end = _find_close(text, start)
            out.append(text[i:start])
            out.append(str(self.expression(text[start + 2 : end], path)))
            length += len(out[-2]) + len(out[-1])
            if length > MAX_VALUE_CHARS:
                raise self._too_large(path)
            i = end + 1
            start = text.find("${", i)
        out.append(text[i:])
        self._charge(length + len(out[-1]), path)
        return "".join(out)

    def _too_large(self, path: str) -> _AtPath:
        return _AtPath(
            path,
            f"its value would be larger than {_mib(MAX_VALUE_CHARS)}, the limit for one interpolated value",
            _growth_hint(path),
        )

    def expression(self, expr: str, path: str) -> Any:
        name, colon, rest = expr.partition(":")
        name = name.strip()
        if colon and name in RESOLVERS:
            args = [str(self.string(a, path)) if "${" in a else a for a in _split_args(rest)]
            result = RESOLVERS[name](*args)
            self._charge(len(result) if isinstance(result, (str, list)) else 1, path)
            return result
        if colon:
            raise ValueError(f"unknown resolver '{name}' (known: {', '.join(RESOLVERS)})")
        return self.reference(name, path)

    def reference(self, key: str, path: str) -> Any:
        """The resolved value of `key`, referred to from `path`."""
        if key in self.active:
            raise ValueError(f"interpolation cycle: {' -> '.join([*self.active, key])}")
        if key in self.resolved:
            value, size = self.resolved[key]
            # Charged at its full size, though the result shares the one object: whoever validates the
            # result walks every copy.
            self._charge(size, path)
            return value
        if len(self.active) >= MAX_REFERENCE_DEPTH:
            chain = [*self.active[:3], "...", *self.active[-2:], key]
            raise ValueError(
                f"interpolations refer through more than {MAX_REFERENCE_DEPTH} keys: {' -> '.join(chain)}"
            )
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
            result = self.value(node, key)
        finally:
            self.active.pop()
        self.resolved[key] = (result, self._size(result, key))
        return result

    def _size(self, value: Any, key: str) -> int:
        """Characters and items in `value`, counted only up to the limit for one value."""
        size, stack = 0, [value]
        while stack:
            item = stack.pop()
            size += (
                len(item) if isinstance(item, str) else len(item) + 1 if isinstance(item, (dict, list)) else 1
            )
            if size > MAX_VALUE_CHARS:
                raise self._too_large(key)
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        self._charge(size, key)
        return size


def resolve_interpolations(
    data: dict[str, Any], *, source: str = "config", error: type[OlmoError] = ConfigError
) -> dict[str, Any]:
    """Return a copy of `data` with every `${...}` resolved; errors name the key that holds it."""
    try:
        return _Resolver(data).value(data, "")
    except _AtPath as e:
        path = e.path if len(e.path) <= 80 else f"{e.path[:40]}...{e.path[-30:]}"
        raise error(
            f"{source}: cannot resolve {path}: {e}",
            hint=e.hint or f"set what it needs, or override the value with --set {path}=...",
        ) from None
    except RecursionError:
        # Not expected within MAX_NESTING, but a traceback must never be the answer.
        raise error(
            f"{source}: its interpolations nest too deeply to be resolved",
            hint="a config nests a few levels deep; check that this is the file you meant",
        ) from None
