"""`olmo chat`: a conversation with a checkpoint in the terminal, replies streamed as they are generated.

The work is the Python API's `ChatSession` (olmo_cli/api/chat.py); this module reads lines (prompt_toolkit
on a terminal, plain lines from a pipe), runs the slash commands and renders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from olmo_cli.commands._options import (
    Dtype,
    DtypeOption,
    MaxNewTokensOption,
    RunDeviceOption,
    SeedOption,
    StopOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
)

if TYPE_CHECKING:
    from prompt_toolkit.history import History

    from olmo_cli.api.chat import ChatSession
    from olmo_cli.data.prompts import FittedConversation

COMMANDS = """\
/system TEXT   set the system message (/system alone removes it)
/reset         start the conversation again (the system message stays)
/save FILE     write the conversation as one JSON Lines record {"messages": [...]}
/help          this list
/exit          leave (or Ctrl-D); Ctrl-C stops a reply. Start a message with // to send a leading /"""


def chat_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="A checkpoint: stepN-unsharded/, a sharded stepN/, a run folder (its latest), a Hugging "
            "Face OLMo directory, a quantized directory or a LoRA adapter.",
            show_default=False,
        ),
    ],
    system: Annotated[
        str | None,
        typer.Option("--system", metavar="TEXT", help="A system message to start with.", show_default=False),
    ] = None,
    max_new_tokens: MaxNewTokensOption = 128,
    temperature: TemperatureOption = 0.0,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    seed: SeedOption = None,
    stop: StopOption = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="File of the lines typed, for Up/Down and Ctrl-R (default: $XDG_CACHE_HOME/olmo/"
            "chat_history, i.e. ~/.cache/olmo/chat_history).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    device: RunDeviceOption = None,
    dtype: DtypeOption = Dtype.auto,
) -> None:
    """Chat with a checkpoint in the terminal: line editing and history, replies streamed as they come.

    The conversation so far is the prompt, in the chat format of the checkpoint's tokenizer (as `olmo
    generate --chat` renders it: a first message gets exactly the tokens `generate --chat -p` gives).
    When it outgrows the model's context the oldest exchanges are left out, with a notice. Commands:
    /system TEXT, /reset, /save FILE (one JSON Lines record {"messages": [...]}, the format `olmo data
    tokenize --chat` reads), /help, /exit. Ctrl-D leaves; Ctrl-C stops the reply being written.

    When stdin is not a terminal each line is a message (or a command) and only the replies are printed
    to stdout, one after another, each ending in a newline.

    Examples:

      olmo chat runs/olmo-tiny

      olmo chat hf/OLMo-2-1124-7B-Instruct --system "You are terse." --temperature 0.7 --seed 1

      printf 'Hi!\\nName three rivers.\\n/save chat.jsonl\\n' | olmo chat ckpt/step1000-unsharded
    """
    from olmo_cli import ui
    from olmo_cli.api.chat import ChatSession
    from olmo_cli.api.model import Model
    from olmo_cli.errors import UsageError
    from olmo_cli.load.build import load_tokenizer
    from olmo_cli.load.read import read_checkpoint
    from olmo_cli.model.generate import GenerationSettings
    from olmo_cli.world import compute_dtype, pick_device

    try:  # checked before the (slow) model load
        GenerationSettings(max_new_tokens, temperature, top_k, top_p, seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    interactive = sys.stdin.isatty()
    where = pick_device(device)
    torch_dtype = compute_dtype(dtype.value, where)
    found = read_checkpoint(checkpoint)
    for warning in found.warnings:
        ui.warn(warning)
    model = Model.from_checkpoint(found, load_tokenizer(found), device=where, dtype=torch_dtype)
    del found  # its weights are in the model now
    session = ChatSession(
        model,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop or [],
    )
    if not interactive:
        for line in sys.stdin:
            if not _handle(session, line.rstrip("\r\n"), interactive=False):
                break
        return
    ui.err_console.print(
        f"[dim]{model.path} ({model.kind}, {where} {str(torch_dtype).removeprefix('torch.')}, "
        f"{model.max_sequence_length} tokens of context). /help for commands, Ctrl-D to leave.[/]",
        highlight=False,
        soft_wrap=True,
    )
    _repl(session, history)


def _repl(session: ChatSession, history_file: Path | None) -> None:
    from prompt_toolkit import PromptSession

    prompt: PromptSession[str] = PromptSession(history=_history(history_file))
    while True:
        try:
            line = prompt.prompt("> ")
        except KeyboardInterrupt:  # at the prompt: drop the line, as a shell does
            continue
        except EOFError:  # Ctrl-D
            return
        if not _handle(session, line, interactive=True):
            return


def _history(path: Path | None) -> History:
    """Lines typed in earlier sessions; kept in memory only (with a warning) when the file cannot be used."""
    import os

    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from olmo_cli import ui

    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "olmo" / "chat_history"
    path = path.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as e:
        ui.warn(f"cannot keep the chat history in {path} ({e.strerror or e}); this session's stays in memory")
        return InMemoryHistory()
    return FileHistory(str(path))


def _handle(session: ChatSession, line: str, *, interactive: bool) -> bool:
    """Runs one line: a command or a message. False: leave."""
    from olmo_cli import ui
    from olmo_cli.errors import OlmoError

    if not line.strip():
        return True
    command = line.strip()
    if command.startswith("/") and not command.startswith("//"):
        return _command(session, command)
    text = line.lstrip()[1:] if command.startswith("//") else line
    try:
        _answer(session, text, interactive)
    except OlmoError as e:
        if not interactive:
            raise
        ui.print_error(e.message, details=e.details, hint=e.hint)
    return True


def _command(session: ChatSession, command: str) -> bool:
    from olmo_cli import ui
    from olmo_cli.errors import OlmoError

    name, _, argument = command[1:].partition(" ")
    argument = argument.strip()
    if name in ("exit", "quit"):
        return False
    if name == "help":
        ui.err_console.print(COMMANDS, markup=False, highlight=False, soft_wrap=True)
    elif name == "reset":
        session.reset()
        _notice("conversation cleared" + (" (the system message stays)" if session.system else ""))
    elif name == "system":
        session.system = argument or None
        _notice("system message set" if argument else "no system message")
    elif name == "save":
        if not argument:
            ui.print_error("/save needs a file name", hint="/save chat.jsonl")
            return True
        try:
            path = session.save(argument)
        except OlmoError as e:
            ui.print_error(e.message, hint=e.hint)
            return True
        _notice(f"saved {len(session.messages)} messages to {path}")
    else:
        ui.print_error(f"no command /{name}", hint="/help lists them; start with // to send a leading /")
    return True


def _notice(text: str) -> None:
    from olmo_cli import ui

    ui.err_console.print(f"[dim]{text}[/]", highlight=False, soft_wrap=True)


def _answer(session: ChatSession, text: str, interactive: bool) -> None:
    from olmo_cli import ui

    def fitted(fit: FittedConversation) -> None:
        if fit.dropped:
            _notice(
                f"left out the oldest {fit.dropped} messages: the conversation and --max-new-tokens "
                f"{session.settings.max_new_tokens} must fit the model's {session.model.max_sequence_length} "
                "tokens"
            )
        if not fit.fits:
            ui.warn(
                f"the newest message reaches {len(fit.ids) + session.settings.max_new_tokens} tokens with "
                f"--max-new-tokens, past the {session.model.max_sequence_length} the model was trained on; "
                "quality drops beyond it"
            )

    def show(piece: str) -> None:
        ui.console.out(piece, end="", highlight=False)

    try:
        session.reply(text, on_text=show, on_fitted=fitted)
    except KeyboardInterrupt:
        if not interactive:
            raise
        ui.console.out("")
        _notice("(stopped)")
        return
    ui.console.out("")
