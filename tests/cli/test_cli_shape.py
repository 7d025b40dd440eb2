"""The command line's surface, frozen: every command and every option name, compared to a snapshot.

Adding, removing or renaming a command or flag is a deliberate change. When you make one, regenerate
the snapshot and the completion scripts, and commit both with the change:

    python -m tests.cli.test_cli_shape --update      # or: UPDATE_SNAPSHOTS=1 python -m pytest tests/cli
    python scripts/gen_completions.py
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import olmo_cli
from olmo_cli.app import app

from ._helpers import run_olmo

SNAPSHOT = Path(__file__).with_name("command_tree.json")
UPDATE_HINT = (
    "Adding or removing a command or flag is a deliberate change: if you meant it, regenerate the "
    "snapshot with `python -m tests.cli.test_cli_shape --update` (or UPDATE_SNAPSHOTS=1) and the "
    "completion scripts with `python scripts/gen_completions.py`, and commit both."
)


def _describe_param(param: Any) -> tuple[str, str, str]:
    """(kind, names, how it takes values) for one click parameter."""
    long_first = sorted(param.opts, key=lambda n: (not n.startswith("--"), n))
    names = "/".join([*long_first, *param.secondary_opts])  # e.g. --wide/-w/--no-wide
    if param.param_type_name == "argument":
        return "arguments", param.name, "repeatable" if param.nargs == -1 else "one"
    takes = "flag" if param.is_flag else "value"
    if param.multiple:
        takes += ", repeatable"
    return "options", names, takes


def command_tree() -> dict[str, dict[str, dict[str, str]]]:
    """{"olmo presets show": {"arguments": {...}, "options": {"--config/-c": "value", ...}}, ...}."""
    root = typer.main.get_command(app)
    tree: dict[str, dict[str, dict[str, str]]] = {}

    def walk(command: Any, path: str, parent: Any) -> None:
        # resilient_parsing: build the context without running callbacks or checking arguments.
        ctx = command.make_context(path.rsplit(" ", 1)[-1], [], parent=parent, resilient_parsing=True)
        entry: dict[str, dict[str, str]] = {"arguments": {}, "options": {}}
        for param in command.get_params(ctx):  # includes --help/-h, which `params` leaves out
            kind, names, takes = _describe_param(param)
            entry[kind][names] = takes
        entry["options"] = dict(sorted(entry["options"].items()))
        tree[path] = entry
        for name in sorted(getattr(command, "commands", {})):
            walk(command.commands[name], f"{path} {name}", ctx)

    walk(root, "olmo", None)
    return tree


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    lines = [f"command added: {c}" for c in actual.keys() - expected.keys()]
    lines += [f"command removed: {c}" for c in expected.keys() - actual.keys()]
    for command in sorted(expected.keys() & actual.keys()):
        for kind in ("arguments", "options"):
            old, new = expected[command].get(kind, {}), actual[command][kind]
            lines += [
                f"{command}: {kind[:-1]} added: {n} ({new[n]})" for n in sorted(new.keys() - old.keys())
            ]
            lines += [f"{command}: {kind[:-1]} removed: {n}" for n in sorted(old.keys() - new.keys())]
            lines += [
                f"{command}: {n} changed from '{old[n]}' to '{new[n]}'"
                for n in sorted(old.keys() & new.keys())
                if old[n] != new[n]
            ]
    return sorted(lines)


def write_snapshot() -> None:
    SNAPSHOT.write_text(json.dumps(command_tree(), indent=2) + "\n")


@pytest.fixture(scope="module")
def tree() -> dict[str, dict[str, dict[str, str]]]:
    return command_tree()


def test_command_tree_matches_snapshot(tree):
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        write_snapshot()
    assert SNAPSHOT.is_file(), f"{SNAPSHOT.name} is missing. {UPDATE_HINT}"
    expected = json.loads(SNAPSHOT.read_text())
    changes = _diff(expected, tree)
    assert not changes, "the command line changed:\n  " + "\n  ".join(changes) + "\n" + UPDATE_HINT
    assert tree == expected, UPDATE_HINT  # e.g. only the order of the file changed


def test_snapshot_diff_names_each_change():
    # The failure message above is only useful if it says what changed.
    before = {
        "olmo": {"arguments": {}, "options": {"--json": "flag"}},
        "olmo a": {"arguments": {}, "options": {}},
    }
    after = {
        "olmo": {"arguments": {}, "options": {"--json": "value", "--new/-n": "flag"}},
        "olmo b": {"arguments": {}, "options": {}},
    }
    assert _diff(before, after) == [
        "command added: olmo b",
        "command removed: olmo a",
        "olmo: --json changed from 'flag' to 'value'",
        "olmo: option added: --new/-n (flag)",
    ]


# ---- help: every command and group explains itself with an example -------------------------------


def _examples_in(help_text: str) -> list[str]:
    """The example invocations a help text gives: `olmo ...` lines, or what follows 'Example:'."""
    found = [line.strip() for line in help_text.splitlines() if line.strip().startswith("olmo ")]
    found += re.findall(r"Examples?:\s*(olmo [^\n]+)", help_text)
    return found


def _commands(tree: dict[str, Any]) -> list[str]:
    return sorted(tree)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_every_command_has_help_with_an_example(tree, runner):
    root = typer.main.get_command(app)
    missing, failed = [], []
    for path in _commands(tree):
        command = root
        for name in path.split()[1:]:
            command = command.commands[name]
        examples = _examples_in(command.help or "")
        if not examples:
            missing.append(path)
        args = [*path.split()[1:], "--help"]
        result = runner.invoke(app, args, prog_name="olmo", env={"COLUMNS": "200", "NO_COLOR": "1"})
        if result.exit_code != 0:
            failed.append(f"{path} --help exited {result.exit_code}: {result.output[-300:]}")
        elif examples and examples[0] not in result.output:
            failed.append(f"{path} --help does not show its example '{examples[0]}'")
    assert not missing, f"help without an example (add 'Example: olmo ...' to the docstring): {missing}"
    assert not failed, "\n".join(failed)


def test_help_option_names_are_short_and_long(tree):
    # Set once on the root (context_settings); every command inherits it.
    assert all(tree[path]["options"].get("--help/-h") == "flag" for path in tree), tree


def test_option_help_renders_literally(tree):
    # Help strings are rich markup: `[a.npy,b.npy]` would be taken for a style tag and disappear
    # from --help. Brackets in help must be escaped as \[.
    from rich.markup import render

    root = typer.main.get_command(app)
    lost = []
    for path in _commands(tree):
        command = root
        for name in path.split()[1:]:
            command = command.commands[name]
        for param in command.params:
            text = getattr(param, "help", None) or ""
            if render(text).plain != text.replace("\\[", "["):
                lost.append(f"{path} {param.opts[0] if param.opts else param.name}: {text!r}")
    assert not lost, "help text that rich would swallow (escape '[' as '\\\\['):\n" + "\n".join(lost)


def test_set_help_shows_the_list_example():
    result = CliRunner().invoke(app, ["presets", "show", "--help"], prog_name="olmo", env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "data.paths=[a.npy,b.npy]" in result.output


# ---- the real entry point ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    proc = run_olmo(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"olmo {olmo_cli.__version__}\n"


def test_no_arguments_shows_help():
    proc = run_olmo()
    # Typer's no_args_is_help exits 2 (click's usage status) after printing the help.
    assert "Usage: olmo" in proc.stdout + proc.stderr
    assert "presets" in proc.stdout + proc.stderr


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.cli.test_cli_shape --update")
    write_snapshot()
    print(f"wrote {SNAPSHOT}; now run `python scripts/gen_completions.py` too")
