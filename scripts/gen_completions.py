"""Write the static shell completion scripts in completions/ (olmo.bash, olmo.zsh, olmo.fish).

Each file holds exactly what `olmo --show-completion SHELL` prints: the script comes from the same
Typer function, with the same program name and completion variable. The scripts only hand the words
typed so far to `olmo` (with _OLMO_COMPLETE set); the candidates themselves are computed by the
installed `olmo` at <TAB> time, so the files change only when Typer changes its templates.

    python scripts/gen_completions.py          # write the files
    python scripts/gen_completions.py --check  # exit 1 and name the files that are out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "completions"
PROG_NAME = "olmo"
# Typer's own rule (typer.completion.show_callback): "_{PROG}_COMPLETE", upper-cased.
COMPLETE_VAR = "_{}_COMPLETE".format(PROG_NAME.replace("-", "_").upper())
SHELLS = {"bash": "olmo.bash", "zsh": "olmo.zsh", "fish": "olmo.fish"}


def render(shell: str) -> str:
    """The completion script for one shell, as `olmo --show-completion SHELL` prints it."""
    # Typer 0.29 keeps this in a private module (it vendors its own Click); tests/cli/test_completions.py
    # compares the result with the real `olmo --show-completion` so a Typer upgrade that moves it shows up.
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def expected_files() -> dict[Path, str]:
    return {OUT_DIR / name: render(shell) for shell, name in SHELLS.items()}


def stale_files() -> list[Path]:
    return [path for path, text in expected_files().items() if not path.is_file() or path.read_text() != text]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a committed script is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: {_shown(path)}", file=sys.stderr)
        if stale:
            print("run `python scripts/gen_completions.py` and commit the result", file=sys.stderr)
            return 1
        return 0
    OUT_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
