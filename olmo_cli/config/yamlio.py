"""YAML in and out. PyYAML follows YAML 1.1, where `3e12` and `1e-4` are strings; upstream configs
(read by OmegaConf) treat them as numbers, so our loader resolves them as floats too.

Config files come from other people (downloaded checkpoints, shared runs), so reading one is bounded:
the file's size is capped, it must be UTF-8 text, anchors and aliases are refused (a kilobyte of them
expands to gigabytes: "billion laughs") and maps and lists may nest only so deep (PyYAML composes
nodes recursively, so a deep file would otherwise end in a RecursionError). Each refusal is one error
of the class the caller names: ConfigError for the user's own files, CheckpointError for a
checkpoint's config.yaml."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml

from olmo_cli.errors import ConfigError, OlmoError

# Upstream configs listing 1000+ data paths are ~160 KB; a hundred times that is still a config.
MAX_CONFIG_BYTES = 16 * 2**20
MAX_NESTING = 64  # levels of maps and lists; upstream configs use four or five

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)

_ALIAS_HINT = (
    "write the values out in full: olmo does not expand YAML anchors and aliases (&name, *name), "
    "since a few lines of them can expand to gigabytes"
)


class _Refused(Exception):
    """A document olmo will not build; carries where in the text it was found."""

    def __init__(self, message: str, mark: Any, hint: str):
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.hint = hint


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"uses the YAML alias *{event.anchor}", event.start_mark, _ALIAS_HINT)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"defines the YAML anchor &{event.anchor}", event.start_mark, _ALIAS_HINT)
        if not isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            return super().compose_node(parent, index)
        self._nesting += 1
        if self._nesting > MAX_NESTING:
            raise _Refused(
                f"nests maps and lists deeper than {MAX_NESTING} levels",
                event.start_mark,
                "a config nests a few levels deep; check that this is the file you meant",
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # Scalars Python cannot build (an int of 5000 digits, the date 2024-13-45) raise ValueError.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            raise _Refused(
                # Python's own advice after the ';' (sys.set_int_max_str_digits) is not the user's fix.
                f"has a value that cannot be read: {str(e).split(';')[0]}",
                node.start_mark,
                "quote the value if it is meant as text",
            ) from None


# Replace the YAML 1.1 float rule with one that also accepts exponents without a dot.
_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def parse_yaml(text: str, *, source: str = "<string>", error: type[OlmoError] = ConfigError) -> Any:
    """The data of one YAML document; any refusal is one `error` naming `source` and the line."""
    if len(text) > MAX_CONFIG_BYTES:
        raise error(
            f"{source} is longer than {MAX_CONFIG_BYTES // 2**20} MiB, too long for a config",
            hint="a config is a few hundred KB of text at most; check that this is the file you meant",
        )
    if "\x00" in text:
        raise error(
            f"{source} contains NUL bytes: it is binary data, not a YAML config",
            hint="give the config YAML file (e.g. a run's config.yaml)",
        )
    try:
        return yaml.load(text, Loader=_Loader)
    except _Refused as e:
        raise error(f"{source}{_where(e.mark)} {e.message}", hint=e.hint) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise error(
            f"{source}{_where(mark)} is not valid YAML: {problem}",
            hint="check the indentation and quoting around that line",
        ) from None
    except RecursionError:
        # Not expected with MAX_NESTING, but a traceback must never be the answer.
        raise error(
            f"{source} nests too deeply to be read", hint="check that this is the file you meant"
        ) from None


_WIDE_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}


def read_config_text(path: Path, *, error: type[OlmoError] = ConfigError) -> str:
    """The text of a config file: at most MAX_CONFIG_BYTES of UTF-8 (a UTF-8 byte order mark is
    allowed); anything else is one `error` naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise error(f"config file {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise error(f"config file {path} is a directory", hint="give the YAML file inside it") from None
    except OSError as e:
        raise error(f"cannot read config file {path}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise error(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB, too large for a config",
            hint="a config is a few hundred KB of text at most; check that this is the file you meant",
        )
    for bom, name in _WIDE_BOMS.items():  # UTF-32 first: its LE mark begins with UTF-16's
        if raw.startswith(bom):
            raise error(f"config file {path} is {name} text", hint="save it as UTF-8")
    if b"\x00" in raw:
        raise error(
            f"config file {path} contains NUL bytes: it is binary data, not a YAML config",
            hint="give the config YAML file (e.g. a run's config.yaml)",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise error(
            f"config file {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} on line {line} is invalid",
            hint="save it as UTF-8; if it is not a config at all, check the path",
        ) from None


def read_yaml(path: Path, *, error: type[OlmoError] = ConfigError) -> Any:
    return parse_yaml(read_config_text(path, error=error), source=str(path), error=error)


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # Quote strings that would read back as another type under our loader (e.g. "2e12").
    if _FLOAT.match(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(tuple, lambda d, v: d.represent_list(list(v)))


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
