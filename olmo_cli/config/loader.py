"""`load_config(preset | file, overrides)`: the one way a command turns user input into a validated
TrainConfig. Order as upstream: schema defaults <- YAML file <- --set overrides, then `${...}`
interpolations are resolved (so they see overridden values), then pydantic validates."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from olmo_cli.config.interpolate import resolve_interpolations
from olmo_cli.config.overrides import apply_overrides
from olmo_cli.config.presets import preset_path
from olmo_cli.config.schema import IgnoredSetting, TrainConfig, not_acted_on
from olmo_cli.config.yamlio import read_yaml
from olmo_cli.errors import ConfigError, OlmoError, UsageError

PRESET_KEY = "preset"  # a preset file's own description block; not part of TrainConfig


@dataclass(frozen=True)
class PresetInfo:
    description: str = ""
    training_tokens: float | None = None  # published figure, when the schedule alone can't say
    notes: str = ""


@dataclass(frozen=True)
class LoadedConfig:
    config: TrainConfig
    source: str  # "preset 7b" or the file path
    preset: PresetInfo | None = None
    ignored: list[IgnoredSetting] = field(default_factory=list)


def load_config(
    preset: str | None = None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    *,
    file_error: type[OlmoError] = ConfigError,
) -> LoadedConfig:
    """`file_error` is what a file that cannot be read, parsed or interpolated raises: CheckpointError
    when the file is a run's or checkpoint's saved config.yaml (`olmo resume`)."""
    if (preset is None) == (config_file is None):
        raise UsageError(
            "give exactly one of --preset NAME and --config FILE",
            hint="`olmo presets list` shows the presets",
        )
    path = preset_path(preset) if preset is not None else Path(config_file)  # type: ignore[arg-type]
    source = f"preset '{preset}'" if preset is not None else str(path)
    data = read_yaml(path, error=file_error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise file_error(f"{source} must be a YAML mapping of config keys, not {type(data).__name__}")
    info = _preset_info(data.pop(PRESET_KEY, None), source)
    data, touched = apply_overrides(data, list(overrides))
    data = resolve_interpolations(data, source=source, error=file_error)
    cfg = validate(data, source=source, overridden=touched, file_error=file_error)
    return LoadedConfig(cfg, source, info, not_acted_on(cfg))


def _preset_info(raw: Any, source: str) -> PresetInfo | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"description", "training_tokens", "notes"}:
        raise ConfigError(
            f"{source}: the '{PRESET_KEY}' block may only hold description, training_tokens and notes"
        )
    return PresetInfo(**raw)


def validate(
    data: dict[str, Any],
    *,
    source: str = "config",
    overridden: set[str] = frozenset(),
    file_error: type[OlmoError] = ConfigError,
) -> TrainConfig:
    """A validated TrainConfig. An invalid setting is the file's fault (`file_error`) unless every
    invalid one came from --set (then ConfigError: the command line is the user's to fix)."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise _translate(e, source, overridden, file_error) from None


# ---- turning pydantic's errors into one readable message -------------------------------------------


def _translate(
    error: ValidationError, source: str, overridden: set[str], file_error: type[OlmoError]
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
            text += " (from --set)"
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
