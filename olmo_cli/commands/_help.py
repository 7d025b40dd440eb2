"""Help that reads well at any width: prose reflowed, flags without a type label.

Typer (0.29) keeps each single line break of a docstring paragraph, so text wrapped for the source
file wraps a second time in the terminal, ragged. `reflow` joins the lines of each prose paragraph
(the terminal wraps it once), and keeps as written what is laid out by hand: a paragraph with an
indented line (examples, tables), one starting with click's no-rewrap marker `\\b`, and the items of a
list (lines starting with "-", "*" or "1."). An example command longer than an 80-column terminal
shows (`EXAMPLE_WIDTH`) is split at spaces outside quotes with shell line continuations, so it wraps as
a command a user can paste.

Typer dedents the text after the first paragraph as a block, so examples under an "Examples:" line
would lose their indentation when nothing else follows; an empty rich markup tag at the start of the
first indented line (invisible, and not part of what a user copies) keeps it.

Typer also labels a boolean flag `<bool>`, as if it took a value; `polish` gives every flag an empty
label instead.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import ArgumentInfo, DefaultPlaceholder, OptionInfo

__all__ = ["polish", "reflow"]

_ITEM = re.compile(r"^(?:[-*\u2022]|\d+[.)])\s")
# What fits on one line of an 80-column terminal inside typer's help (its margins and a backslash).
EXAMPLE_WIDTH = 76


def _split_command(line: str, width: int = EXAMPLE_WIDTH) -> list[str]:
    """An indented shell command as lines of at most `width` (where a space outside quotes allows),
    each but the last ending in a line continuation, the later ones indented four more."""
    indent = line[: len(line) - len(line.lstrip())]
    out: list[str] = []
    rest, lead = line.strip(), indent
    while len(lead) + len(rest) > width:
        room = width - len(lead) - 2  # the " \\" continuation
        quote, cut, before_option = "", -1, -1
        for i, char in enumerate(rest):
            if char in "'\"" and (not quote or quote == char):
                quote = "" if quote else char
            elif char == " " and not quote and i <= room:
                cut = i
                if rest[i + 1 : i + 2] == "-" or not rest[:i].split()[-1].startswith("-"):
                    before_option = i  # not between an option and its value
            if i > room:
                break
        if before_option > room // 2:
            cut = before_option
        if cut <= 0:
            break  # no space outside quotes early enough: leave the rest long
        out.append(f"{lead}{rest[:cut]} \\")
        rest, lead = rest[cut + 1 :].lstrip(), indent + "    "
    out.append(f"{lead}{rest}")
    return out


def _is_command(line: str) -> bool:
    text = line.strip()
    return text.startswith("olmo ") or " | olmo " in text


def reflow(text: str) -> str:
    """`text` with the single line breaks inside its prose paragraphs joined (see the module docstring)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    out = []
    for paragraph in paragraphs:
        lines = paragraph.split("\n")
        if paragraph.startswith("\b") or any(line[:1].isspace() for line in lines):
            laid_out = [part for line in lines for part in _laid_out(line)]
            out.append("\n".join(laid_out))
            continue
        merged: list[str] = []
        for line in lines:
            if merged and not _ITEM.match(line):
                merged[-1] = f"{merged[-1]} {line.strip()}"
            else:
                merged.append(line.strip())
        out.append("\n".join(merged))
    return "\n\n".join(out)


_KEEP = "[b][/b]"  # an empty rich markup span: a line that starts with it is not indented to cleandoc


def _keep_indent(text: str) -> str:
    """`text` with the first indented line after its first two lines marked when every later line is
    indented (so typer's cleandoc of the text after the first paragraph would strip their indent)."""
    first, sep, rest = text.partition("\n\n")
    lines = rest.split("\n")
    later = [i for i, line in enumerate(lines) if line.strip()][1:]
    if not later or not all(lines[i][:1].isspace() for i in later):
        return text
    lines[later[0]] = _KEEP + lines[later[0]]
    return first + sep + "\n".join(lines)


def _laid_out(line: str) -> list[str]:
    if line[:1].isspace() and _is_command(line) and len(line) > EXAMPLE_WIDTH:
        return _split_command(line)
    return [line]


def _flag_labels(callback: Any) -> None:
    """An empty type label on each boolean option of `callback` (its Annotated typer.Option metadata)."""
    try:
        hints = typing.get_type_hints(callback, include_extras=True)
    except Exception:  # noqa: BLE001 - a hint that cannot be resolved keeps typer's own label
        return
    for name, hint in hints.items():
        if name == "return" or typing.get_origin(hint) is not typing.Annotated:
            continue
        base, *metadata = typing.get_args(hint)
        for info in metadata:
            if isinstance(info, OptionInfo) and base is bool and info.metavar is None:
                info.metavar = ""
            if isinstance(info, OptionInfo | ArgumentInfo) and info.help:
                info.help = reflow(info.help)
    # Under `from __future__ import annotations` each evaluation makes new OptionInfo objects: keep the
    # ones changed here as the annotations typer reads.
    callback.__annotations__ = hints


def _completion_flags() -> None:
    """Typer's own --install-completion / --show-completion flags are declared (as defaults) on a
    placeholder function of typer.completion: the same treatment (skipped if a later typer moves it)."""
    import inspect as _inspect

    import typer.completion as completion

    function = getattr(completion, "_install_completion_placeholder_function", None)
    if not callable(function):
        return
    for parameter in _inspect.signature(function).parameters.values():
        if isinstance(parameter.default, OptionInfo) and parameter.default.metavar is None:
            parameter.default.metavar = ""


def _unlabelled_help(option: Any) -> Any:
    if option is not None and option.metavar is None:
        option.metavar = ""
    return option


class _Command(TyperCommand):
    """A command whose -h/--help flag shows no type label."""

    def get_help_option(self, ctx: Any) -> Any:
        return _unlabelled_help(super().get_help_option(ctx))


class _Group(TyperGroup):
    """A command group whose -h/--help flag shows no type label."""

    def get_help_option(self, ctx: Any) -> Any:
        return _unlabelled_help(super().get_help_option(ctx))


def polish(app: typer.Typer) -> None:
    """Reflows the help of `app`, its commands and its groups, and clears the flags' type labels."""
    _completion_flags()
    if app.info.cls is None or app.info.cls is TyperGroup or isinstance(app.info.cls, DefaultPlaceholder):
        app.info.cls = _Group
    if app.info.help:
        app.info.help = _keep_indent(reflow(app.info.help))
    if app.registered_callback is not None:
        callback = app.registered_callback
        text = callback.help or (None if app.info.help else getattr(callback.callback, "__doc__", None))
        if text:  # the group's help when the Typer itself has none (e.g. `olmo finetune`)
            callback.help = _keep_indent(reflow(text))
        if callback.callback is not None:
            _flag_labels(callback.callback)
    for command in app.registered_commands:
        if command.cls is None or command.cls is TyperCommand or isinstance(command.cls, DefaultPlaceholder):
            command.cls = _Command
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if text:
            command.help = _keep_indent(reflow(text))
        if command.callback is not None:
            _flag_labels(command.callback)
    for group in app.registered_groups:
        if group.help:
            group.help = _keep_indent(reflow(group.help))
        if group.typer_instance is not None:
            polish(group.typer_instance)
