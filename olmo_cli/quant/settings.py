"""What a quantized checkpoint records about itself: method, group size, which modules, format version.

`quantization.json` holds it; the same JSON is also stored in the safetensors header (`olmo.quantization`)
so the weights file alone says how to read it, and a loader can tell when the two disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from olmo_cli.checkpoint.layout import QUANT_SETTINGS_FILE, QUANT_WEIGHTS_FILE
from olmo_cli.errors import CheckpointError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INT4_GROUP_SIZES",
    "METHODS",
    "METADATA_KEY",
    "SETTINGS_FILE",
    "WEIGHTS_FILE",
    "QuantLayout",
    "QuantSettings",
]

FORMAT = "olmo-quant"
FORMAT_VERSION = 1
METHODS = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 CPU kernel takes
SETTINGS_FILE = QUANT_SETTINGS_FILE
WEIGHTS_FILE = QUANT_WEIGHTS_FILE
METADATA_KEY = "olmo.quantization"


@dataclass(frozen=True)
class QuantSettings:
    """What the user asked for. `group_size` applies to int4 only; `embeddings` quantizes the token
    embedding too (and with it a tied output layer)."""

    method: str
    group_size: int | None = None
    embeddings: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown quantization method {self.method!r} (known: {', '.join(METHODS)})")
        if self.method == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"int4 group size {self.group_size} is not supported (one of "
                f"{', '.join(map(str, INT4_GROUP_SIZES))})"
            )
        if self.method == "int8" and self.group_size is not None:
            raise ValueError("int8 is per output channel: it takes no group size")


@dataclass(frozen=True)
class QuantLayout:
    """The settings plus what was done: {module name: method} for every quantized module (a module
    whose shape does not fit the method falls back to int8 and is listed so)."""

    settings: QuantSettings
    modules: dict[str, str]
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.settings.method,
            "group_size": self.settings.group_size,
            "embeddings": self.settings.embeddings,
            "scale_dtype": "bfloat16",
            "modules": dict(sorted(self.modules.items())),
            "source": self.source,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def summary(self) -> dict[str, Any]:
        """What a model run from this checkpoint is: the method, its group size, whether the embeddings
        are quantized, and how many modules are (and fell back to int8)."""
        method = self.settings.method
        return {
            "method": method,
            "group_size": self.settings.group_size,
            "embeddings": self.settings.embeddings,
            "modules": len(self.modules),
            "int8_fallbacks": sum(1 for m in self.modules.values() if m != method),
        }

    def describe(self) -> str:
        """One phrase for a status line, e.g. "int4 weights (groups of 64; 2 modules int8)"."""
        info = self.summary()
        parts = [f"groups of {info['group_size']}"] if info["group_size"] else ["per output channel"]
        if info["int8_fallbacks"]:
            parts.append(f"{info['int8_fallbacks']} module{'s' if info['int8_fallbacks'] != 1 else ''} int8")
        if not info["embeddings"]:
            parts.append("embeddings unquantized")
        return f"{info['method']} weights ({'; '.join(parts)})"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> QuantLayout:
        """Parses and checks the record; anything unknown or inconsistent is a CheckpointError."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CheckpointError(
                f"{source} is not valid JSON: {str(e)[:200] or 'nested too deeply'}"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(
                f"{source} is not an olmo quantization record (format {_get(data, 'format')!r})",
                hint=f'a quantized checkpoint written by `olmo quantize` says "format": "{FORMAT}"',
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has quantization format version {version!r}; this olmo reads version "
                f"{FORMAT_VERSION}",
                hint="upgrade olmo, or quantize the original checkpoint again with this version",
            )
        settings = _settings(data, source)
        modules = data.get("modules")
        if not isinstance(modules, dict) or not modules:
            raise CheckpointError(f"{source} lists no quantized modules")
        bad = {name: m for name, m in modules.items() if m not in METHODS}
        if bad:
            name, method = next(iter(bad.items()))
            raise CheckpointError(
                f"{source}: module {name} has unknown quantization method {method!r}",
                hint=f"known methods: {', '.join(METHODS)}",
            )
        src = data.get("source")
        return cls(settings, dict(modules), src if isinstance(src, str) else None)


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _settings(data: dict[str, Any], source: str) -> QuantSettings:
    method = data.get("method")
    try:
        return QuantSettings(method, data.get("group_size"), bool(data.get("embeddings", True)))
    except ValueError as e:
        raise CheckpointError(
            f"{source}: {e}",
            hint="the quantization record is damaged or from another tool; quantize the original "
            "checkpoint again (olmo quantize CKPT --method int8|int4 --output DIR)",
        ) from None
