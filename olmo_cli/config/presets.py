"""Where presets live. Kept free of pydantic and YAML imports: tab completion lists preset names
through this module and must answer instantly."""

from __future__ import annotations

import difflib
from pathlib import Path

from olmo_cli.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent.parent


def preset_dir() -> Path:
    """`olmo_cli/presets` inside an installed wheel; the repository's top-level `presets/` in a
    source checkout (editable install): see docs/architecture.md, section 3."""
    for candidate in (_PACKAGE / "presets", _PACKAGE.parent / "presets"):
        if candidate.is_dir():
            return candidate
    raise UsageError("the presets folder is missing from this installation", hint="reinstall olmo")


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = preset_dir() / f"{name}.yaml"
    if path.is_file():
        return path
    names = preset_names()
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UsageError(
        f"unknown preset '{name}'",
        hint=f"{hint}presets: {', '.join(names)} (or pass --config FILE)",
    )
