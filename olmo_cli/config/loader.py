"""`load_config`: the one way a command turns user input into a validated TrainConfig.

Layers, in increasing precedence (each key takes the value of the highest layer that sets it):
  1. the schema's defaults;
  2. the starting point: the preset (`--preset`, without its `preset:` description block), or without
     preset and file, `base`: a checkpoint's own config as data (`olmo finetune`);
  3. `defaults`: a command's own defaults over the starting point (finetune's learning rate, ...); a
     mapping of dotted keys, or a function of the data below it (e.g. a cap on the base's batch);
  4. the config file (`--config`): a user's file wins over the command's defaults;
  5. `options`: typed values of command-line options (`--lora-rank`), below --set;
  6. `--set KEY=VALUE` overrides, read as YAML;
  7. `forced`: typed values a command decides (`--save-folder`, the run `olmo resume` continues).
Then `${...}` interpolations are resolved (so they see every layer) and pydantic validates. Typed
values are never turned back into text: `--save-folder 2024` names the folder "2024". An invalid value
is blamed on where it came from: the file (`file_error`), --set, or the option named in `origins`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from olmo_cli.config.interpolate import resolve_interpolations
from olmo_cli.config.overrides import apply_overrides, dotted_keys, set_values
from olmo_cli.config.presets import preset_path
from olmo_cli.config.schema import IgnoredSetting, TrainConfig, not_acted_on
from olmo_cli.config.yamlio import read_yaml
from olmo_cli.errors import ConfigError, OlmoError, UsageError

PRESET_KEY = "preset"  # a preset file's own description block; not part of TrainConfig

Defaults = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class PresetInfo:
    family: str = ""  # "OLMo 1", "OLMo 2": how `olmo presets list` groups the presets
    description: str = ""
    training_tokens: float | None = None  # published figure, when the schedule alone can't say
    notes: str = ""


@dataclass(frozen=True)
class LoadedConfig:
    config: TrainConfig
    source: str  # "preset 7b", the file path, or the base's name
    preset: PresetInfo | None = None
    ignored: list[IgnoredSetting] = field(default_factory=list)
    explicit: frozenset[str] = frozenset()
    """Dotted keys the user set: in the config file, with --set, or through an option."""


def load_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
    base_source: str = "the checkpoint's config",
    defaults: Defaults | None = None,
    options: Mapping[str, Any] | None = None,
    forced: Mapping[str, Any] | None = None,
    origins: Mapping[str, str] | None = None,
    file_error: type[OlmoError] = ConfigError,
) -> LoadedConfig:
    """The layers of the module doc. The source is the preset or `config_file` (exactly one of them), or
    with `base` given, at most one of them (neither: `base` is the starting point). `origins` names the
    option each `options`/`forced` key came from (e.g. {"save_folder": "--save-folder"}), for messages.
    `file_error` is what a file that cannot be read, parsed or interpolated raises: CheckpointError when
    the file is a run's or checkpoint's saved config.yaml (`olmo resume`)."""
    sources = (preset is not None) + (config_file is not None)
    if sources > 1 or (base is None and sources == 0):
        raise UsageError(
            "give at most one of --preset NAME and --config FILE"
            if base is not None
            else "give exactly one of --preset NAME and --config FILE",
            hint="`olmo presets list` shows the presets",
        )
    data: dict[str, Any] = dict(base) if base is not None and sources == 0 else {}
    source, info = base_source, None
    if preset is not None:
        data, info = _read_source(preset_path(preset), f"preset '{preset}'", file_error)
        source = f"preset '{preset}'"
    data, _ = set_values(data, _resolved(defaults, data))
    explicit: set[str] = set()
    if config_file is not None:
        source = str(config_file)
        own, info = _read_source(Path(config_file), source, file_error)
        data = _merged(data, own)
        explicit |= dotted_keys(own)
    data, from_options = set_values(data, options or {})
    data, from_set = apply_overrides(data, list(overrides))
    data, from_forced = set_values(data, forced or {})
    data = resolve_interpolations(data, source=source, error=file_error)
    blame = {key: "--set" for key in from_set}
    blame |= {key: (origins or {}).get(key, "the command line") for key in from_options | from_forced}
    cfg = validate(data, source=source, overridden=blame, file_error=file_error)
    explicit |= from_options | from_set | from_forced
    return LoadedConfig(cfg, source, info, not_acted_on(cfg), frozenset(explicit))


def _read_source(
    path: Path, source: str, file_error: type[OlmoError]
) -> tuple[dict[str, Any], PresetInfo | None]:
    data = read_yaml(path, error=file_error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise file_error(f"{source} must be a YAML mapping of config keys, not {type(data).__name__}")
    return data, _preset_info(data.pop(PRESET_KEY, None), source)


def _resolved(defaults: Defaults | None, below: Mapping[str, Any]) -> Mapping[str, Any]:
    if defaults is None:
        return {}
    return defaults(below) if callable(defaults) else defaults


def _merged(below: dict[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """`above` over `below`, section by section (a file that sets optimizer.lr keeps the rest of the
    optimizer section below it); a value that is not a section replaces what is below."""
    result = dict(below)
    for key, value in above.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(dict(result[key]), value)
        else:
            result[key] = value
    return result


def _preset_info(raw: Any, source: str) -> PresetInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"family", "description", "training_tokens", "notes"}:
        raise ConfigError(
            f"{source}: the '{PRESET_KEY}' block may only hold family, description, training_tokens and notes"
        )
    return PresetInfo(**raw)


def validate(
    data: dict[str, Any],
    *,
    source: str = "config",
    overridden: Mapping[str, str] | None = None,
    file_error: type[OlmoError] = ConfigError,
) -> TrainConfig:
    """A validated TrainConfig. An invalid setting is the file's fault (`file_error`) unless every
    invalid one came from the command line (`overridden`: dotted key -> "--set" or the option's name;
    then ConfigError: the command line is the user's to fix)."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _translate(e, source, overridden or {}, file_error) from None


# ---- turning pydantic's errors into one readable message -------------------------------------------


def _translate(
    error: ValidationError, source: str, overridden: Mapping[str, str], file_error: type[OlmoError]
) -> OlmoError:
    lines: dict[str, list[str]] = {}
    from_file = False
    for err in error.errors(include_url=False):
        path, parent_model = _clean_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            key = path.rsplit(".", 1)[-1]
            text = f"unknown key '{key}'"
            valid = list(parent_model.model_fields) if parent_model else []
            text += _suggest(key, valid)
        else:
            text = _describe(err)
        if path in overridden:
            text += f" (from {overridden[path]})"
        else:
            from_file = True
        lines.setdefault(path or "(top level)", []).append(text)
    details = [f"{path}: {' or '.join(dict.fromkeys(texts))}" for path, texts in lines.items()]
    count = len(details)
    return (file_error if from_file else ConfigError)(
        f"{source} has {count} invalid setting{'s' if count > 1 else ''}:",
        details=details,
        hint="fix the value in the file or with --set KEY=VALUE; "
        "`olmo presets show NAME` prints a valid config",
    )


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if len(valid) <= 12:
        return f"; valid keys here: {', '.join(valid)}"
    # A long section (the top level has ~75 keys): name a few candidates, not the whole list.
    loose = difflib.get_close_matches(key, valid, n=3, cutoff=0.3)
    maybe = f" (closest: {', '.join(loose)})" if loose else ""
    return f"; not a key of this section{maybe}; `olmo presets show tiny` prints every valid key"


def _describe(err: dict[str, Any]) -> str:
    msg: str = err["msg"]
    for prefix, replacement in (
        ("Value error, ", ""),
        ("Input should be greater", "expected a value greater"),
        ("Input should be less", "expected a value less"),
        ("Input should be ", "expected "),
    ):
        if msg.startswith(prefix):
            msg = replacement + msg[len(prefix) :]
            break
    if err["type"] == "missing":
        return "is required but missing"
    value = err.get("input")
    if isinstance(value, (dict, list)) or err["type"].startswith("value_error"):
        return msg  # a whole section's check: the message says what is wrong
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"got {shown}, {msg}"


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None]:
    """Drop pydantic's union-member tags from an error location and find the config section that
    holds the last key (to suggest the closest valid key)."""
    parts: list[str] = []
    current: Any = TrainConfig
    parent: type[BaseModel] | None = TrainConfig
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
            current = _element_type(current)
            continue
        model = _as_model(current)
        if model is not None and part in model.model_fields:
            parent = model
            parts.append(part)
            current = model.model_fields[part].annotation
        elif model is not None:
            parent = model
            parts.append(part)  # an unknown key: the last part of the path
            current = None
        elif _is_mapping(current):
            parts.append(part)
            current = typing.get_args(_strip_optional(current))[1]
        # else: a union tag such as 'int' or 'function-after[...]'; not part of the path
    return ".".join(parts), parent


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    if typing.get_origin(tp) is typing.Annotated:
        return _strip_optional(typing.get_args(tp)[0])
    return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(_strip_optional(tp)) is dict


def _element_type(tp: Any) -> Any:
    args = typing.get_args(_strip_optional(tp))
    return args[0] if args else None
