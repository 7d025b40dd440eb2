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
MAX_NODES = 250_000  # keys and values; upstream configs hold at most ~1600

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


_DEEP = f"nests maps and lists deeper than {MAX_NESTING} levels"
_DEEP_HINT = "a config nests a few levels deep; check that this is the file you meant"


class _Refused(Exception):
    """A document olmo will not build; carries where in the text it was found."""

    def __init__(self, message: str, mark: Any, hint: str):
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.hint = hint


class _Guards:
    """Composition and construction with olmo's limits; mixed into a PyYAML loader ahead of its
    Composer. PyYAML composes recursively, one Python frame pair per level, hence the nesting cap."""

    def __init__(self) -> None:
        self._nesting = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"uses the YAML alias *{event.anchor}", event.start_mark, _ALIAS_HINT)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"defines the YAML anchor &{event.anchor}", event.start_mark, _ALIAS_HINT)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                f"holds more than {MAX_NODES:,} values",
                event.start_mark,
                "upstream configs hold a few thousand; check that this is the file you meant",
            )
        if not isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            return super().compose_node(parent, index)  # type: ignore[misc]
        self._nesting += 1
        if self._nesting > MAX_NESTING:
            raise _Refused(_DEEP, event.start_mark, _DEEP_HINT)
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._nesting -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # Scalars Python cannot build (an int of 5000 digits, the date 2024-13-45) raise ValueError.
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, OverflowError) as e:
            raise _Refused(
                # Python's own advice after the ';' (sys.set_int_max_str_digits) is not the user's fix.
                f"has a value that cannot be read: {str(e).split(';')[0]}",
                node.start_mark,
                "quote the value if it is meant as text",
            ) from None


class _PureLoader(_Guards, yaml.SafeLoader):
    """PyYAML's own scanner and parser, in Python: ~1 s per MiB of text."""

    def __init__(self, stream: str):
        yaml.SafeLoader.__init__(self, stream)
        _Guards.__init__(self)


_LOADERS: list[type] = [_PureLoader]
if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _FastLoader(
        _Guards,
        yaml.composer.Composer,
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """libyaml scans and parses (16 MiB in a fraction of a second); composition stays in Python,
        ahead of CParser in the MRO, so that the guards above see every node."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            _Guards.__init__(self)

    _LOADERS.insert(0, _FastLoader)

# Replace the YAML 1.1 float rule with one that also accepts exponents without a dot.
for _cls in _LOADERS:
    _cls.yaml_implicit_resolvers = {  # type: ignore[attr-defined]
        key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))  # type: ignore[attr-defined]
_Loader = _LOADERS[0]


def _where(mark: Any) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def parse_yaml(
    text: str, *, source: str = "<string>", error: type[OlmoError] = ConfigError, loader: type | None = None
) -> Any:
    """The data of one YAML document; any refusal is one `error` naming `source` and the line.
    `loader` picks one of the two loaders (tests run both); by default libyaml's when installed."""
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
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # e.g. undecodable bytes in a --set argument
        raise error(
            f"{source} is not valid UTF-8 text (character {e.start + 1})", hint="write the value as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=loader or _Loader)
    except _Refused as e:
        raise error(f"{source}{_where(e.mark)} {e.message}", hint=e.hint) from None
    except yaml.reader.ReaderError as e:
        code = e.character if isinstance(e.character, int) else ord(e.character)
        first = text.find(chr(code))  # libyaml reports a byte offset, PyYAML a character index
        where = f" (line {text.count(chr(10), 0, first) + 1})" if first >= 0 else ""
        raise error(
            f"{source}{where} holds the control character U+{code:04X}, which YAML does not allow",
            hint="remove the control character; if this is not a config at all, check the path",
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        if problem == "exceeded maximum nesting depth":  # libyaml's own limit (1000), met while scanning
            raise error(f"{source}{_where(mark)} {_DEEP}", hint=_DEEP_HINT) from None
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
    from olmo_cli.untrusted import NotARegularFile, TooLarge, read_limited

    try:
        raw = read_limited(path, MAX_CONFIG_BYTES)
    except TooLarge:
        raise error(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB, too large for a config",
            hint="a config is a few hundred KB of text at most; check that this is the file you meant",
        ) from None
    except NotARegularFile:
        raise error(f"config file {path} is not a regular file (a device or FIFO)") from None
    except FileNotFoundError:
        raise error(f"config file {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise error(f"config file {path} is a directory", hint="give the YAML file inside it") from None
    except OSError as e:
        raise error(f"cannot read config file {path}: {e.strerror}") from None
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


def dump_config(cfg: Any) -> str:
    """A TrainConfig as olmo writes it into a run or checkpoint (config.yaml): every field, with upstream
    settings olmo does not act on recorded as what olmo does (`schema.as_acted_on`)."""
    from olmo_cli.config.schema import as_acted_on

    return dump_yaml(as_acted_on(cfg).model_dump(mode="json"))
