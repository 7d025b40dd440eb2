"""`olmo checkpoints list|download`: the published intermediate checkpoints. The work is in olmo_cli.hub."""

from __future__ import annotations

import os
import re
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import ConfigOption, JsonOption, PresetOption

if TYPE_CHECKING:
    from olmo_cli.hub.download import CheckpointPlan
    from olmo_cli.hub.index import CheckpointIndex

MODEL_NAMES = ("1b", "7b", "7b-twin-2t", "7b-0424", "7b-0724")  # = olmo_cli.hub.index.MODELS

app = typer.Typer(
    help="The published intermediate checkpoints: list them, download them."
    "\n\nExamples:\n\n  olmo checkpoints list --model 1b"
    "\n\n  olmo checkpoints download --model 1b --step 20000 --dest ckpts",
    no_args_is_help=True,
)


class Source(str, Enum):
    official = "official"
    hf = "hf"


def _complete_model(incomplete: str) -> list[str]:
    return [name for name in MODEL_NAMES if name.startswith(incomplete)]


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help=f"Which model's checkpoints: {', '.join(MODEL_NAMES)} (default: the --preset, --config or "
        "--run model).",
        autocompletion=_complete_model,
        show_default=False,
    ),
]
IndexOption = Annotated[
    str | None,
    typer.Option(
        "--index",
        metavar="FILE|URL",
        help="A checkpoint index in upstream's format (CSV, header 'Step,Checkpoint Directory') instead "
        "of the model's published one.",
        show_default=False,
    ),
]
RunOption = Annotated[
    Path | None,
    typer.Option(
        "--run",
        metavar="DIR",
        help="A run or checkpoint directory: the model is taken from its config.yaml.",
        file_okay=False,
        show_default=False,
    ),
]


def _resolve_model(
    model: str | None, preset: str | None, config: Path | None, run: Path | None
) -> str | None:
    """--model, else the model of --preset / --config / --run; None if none of them was given."""
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.index import check_model, model_for_config

    if model is not None:
        return check_model(model)
    if preset is not None:
        return check_model(preset)
    source = config if config is not None else (run / "config.yaml" if run is not None else None)
    if source is None:
        return None
    found = model_for_config(source)
    if found is None:
        raise UsageError(
            f"cannot tell which published model {source} is (its run_name names none)",
            details=[f"models with published checkpoints: {', '.join(MODEL_NAMES)}"],
            hint="pass --model",
        )
    return found


def _need_model(model: str | None) -> str:
    from olmo_cli.errors import UsageError

    if model is None:
        raise UsageError(
            "which model's checkpoints? none was given",
            details=[f"models with published checkpoints: {', '.join(MODEL_NAMES)}"],
            hint="pass --model NAME (or --preset NAME), or an index with --index FILE|URL",
        )
    return model


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "olmo" / "checkpoint-index"


def _load_index(model: str | None, index: str | None) -> CheckpointIndex:
    from olmo_cli.hub.index import load_index, official_index_url

    return load_index(index or official_index_url(_need_model(model)), cache_dir=_cache_dir())


def _hf_endpoint() -> str:
    # Hugging Face's own variables, so a mirror or a token set up for `huggingface-cli` works here too.
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


@app.command("list")
def list_command(
    model: ModelOption = None,
    index: IndexOption = None,
    source: Annotated[
        Source,
        typer.Option(
            "--source",
            help="official: the published index of unsharded checkpoints; hf: the model's Hugging Face "
            "revisions (branches such as step1000-tokens4B).",
        ),
    ] = Source.official,
    preset: PresetOption = None,
    config: ConfigOption = None,
    run: RunOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the published checkpoints of a model: step, tokens trained on, and where it is.

    Tokens are the step times the preset's batch size in tokens (official source) or the figure in
    the Hugging Face branch name. The index is read once and cached (~/.cache/olmo/checkpoint-index).

    Examples:

      olmo checkpoints list --model 7b-0724

      olmo checkpoints list --preset 1b --json

      olmo checkpoints list --model 7b --source hf

      olmo checkpoints list --index my-mirror/OLMo-1B.csv
    """
    from olmo_cli import ui

    name = _resolve_model(model, preset, config, run)
    if source is Source.hf:
        rows, title = _hf_rows(_need_model(name), index)
    else:
        rows, title = _official_rows(name, index)
    if json_output:
        ui.print_json(rows)
        return
    table = ui.table("Step", "Tokens", "Checkpoint", title=title, right=("Step", "Tokens"))
    for row in rows:
        where = row.get("revision") or row.get("url")
        table.add_row("-" if row["step"] is None else str(row["step"]), ui.human_count(row["tokens"]), where)
    ui.console.print(table)
    ui.console.print(f"{len(rows)} checkpoints", style="dim")


def _official_rows(model: str | None, index: str | None) -> tuple[list[dict[str, Any]], str]:
    from olmo_cli.hub.index import tokens_per_step

    loaded = _load_index(model, index)
    per_step = tokens_per_step(model) if model else None
    rows = [
        {"step": e.step, "tokens": e.step * per_step if per_step else None, "url": e.url}
        for e in loaded.entries
    ]
    return rows, f"Checkpoints in {loaded.source}"


def _hf_rows(model: str, index: str | None) -> tuple[list[dict[str, Any]], str]:
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.hf import list_revisions
    from olmo_cli.hub.index import HF_REPOS

    if index is not None:
        raise UsageError("--index is for the official source, not --source hf")
    repo = HF_REPOS[model]
    revisions = list_revisions(repo, endpoint=_hf_endpoint(), token=os.environ.get("HF_TOKEN"))
    return [r.as_dict() for r in revisions], f"Hugging Face revisions of {repo}"


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match or int(match[1]) == 0:
        raise typer.BadParameter(f"{text!r} is not a size such as 64M, 512K or 1G")
    return int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2].upper()]


@app.command("download")
def download_command(
    step: Annotated[
        list[int] | None,
        typer.Option(
            "--step", min=0, metavar="N", help="A step listed in the index. Repeatable.", show_default=False
        ),
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="The last checkpoint in the index.")] = False,
    model: ModelOption = None,
    index: IndexOption = None,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            "-o",
            metavar="DIR",
            help="Where checkpoints go, as DIR/step{N}-unsharded/ (default: checkpoints/MODEL, or "
            "checkpoints/ with --index alone).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the files that would be fetched, with sizes; fetch none.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", min=1, max=64, help="Parallel connections (across files and ranges)."),
    ] = 8,
    chunk_size: Annotated[
        str, typer.Option("--chunk-size", metavar="SIZE", help="Fetch larger files in ranges of this size.")
    ] = "64M",
    preset: PresetOption = None,
    config: ConfigOption = None,
    run: RunOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars and no final table.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Download checkpoints into DEST/step{N}-unsharded/, ready for `olmo resume --load-path`.

    Which files: a checkpoint directory URL cannot be listed, so olmo asks the server (HEAD) for
    upstream's file names: config.yaml, model.safetensors, optim.safetensors and train.pt, and
    model.pt / optim.pt where the .safetensors file is absent. What exists is downloaded.

    Files are fetched in parallel, large ones in byte ranges; connection errors, timeouts and 5xx
    answers are retried with backoff (a try slower than 4 KiB/s over 30 s counts as failed, and
    each file has a deadline); a 4xx answer, a redirect loop or a redirect to another scheme stops
    at once. Every answer must agree with the size and version the server announced; a disagreement
    asks the server once more, then stops. Each file is checked against the size and, where the
    server offers one, the checksum it announced, then renamed into place; the
    checkpoint directory gets its name (and a .olmo-download.json manifest) only when every file is
    there. Interrupted (even kill -9)? Run the same command again: it continues from the bytes on disk.

    Examples:

      olmo checkpoints download --model 1b --step 20000 --dest ckpts

      olmo checkpoints download --preset 7b-0724 --latest --dry-run

      olmo checkpoints download --index mirror.csv --step 1000 --step 2000 -o ckpts --quiet
    """
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.download import DownloadOptions, plan_download

    if bool(step) == latest:
        raise UsageError(
            "give --step N (one or more) or --latest", hint="`olmo checkpoints list` shows the steps"
        )
    name = _resolve_model(model, preset, config, run)
    loaded = _load_index(name, index)
    entries = [loaded.latest()] if latest else [loaded.find(s) for s in dict.fromkeys(step or [])]
    options = DownloadOptions(jobs=jobs, chunk_size=_parse_size(chunk_size), hf_endpoint=_hf_endpoint())
    plans = plan_download(entries, dest or Path("checkpoints", *([name] if name else [])), options)
    if dry_run:
        _show_plan(plans, json_output)
        return
    _download(plans, options, quiet=quiet, json_output=json_output)


def _show_plan(plans: list[CheckpointPlan], json_output: bool) -> None:
    from olmo_cli import ui

    if json_output:
        ui.print_json([p.as_dict() for p in plans])
        return
    table = ui.table(
        "Step", "File", "Size", "On disk", "URL", title="Would download", right=("Size", "On disk")
    )
    for plan in plans:
        for f in plan.files:
            size = "?" if f.remote.size is None else ui.human_bytes(f.remote.size)
            table.add_row(str(plan.step), f.remote.name, size, ui.human_bytes(f.on_disk), f.remote.url)
    ui.console.print(table)
    total, missing = sum(p.size for p in plans), sum(p.missing for p in plans)
    ui.console.print(f"{ui.human_bytes(missing)} to fetch of {ui.human_bytes(total)}; nothing was downloaded")


def _download(plans: list[CheckpointPlan], options: Any, *, quiet: bool, json_output: bool) -> None:
    from olmo_cli import ui
    from olmo_cli.hub import events
    from olmo_cli.hub.download import download

    finished: dict[tuple[int, str], events.FileDone] = {}
    started: set[tuple[int, str]] = set()
    start = time.monotonic()
    with ui.transfers(enabled=not (quiet or json_output)) as bars:

        def on_event(event: events.DownloadEvent) -> None:
            if isinstance(event, events.FileStarted) and event.key in started:
                bars.update(event.key, event.on_disk)  # started again after the server was asked again
            elif isinstance(event, events.FileStarted):
                started.add(event.key)
                bars.add(event.key, f"step{event.key[0]} {event.key[1]}", event.size, event.on_disk)
            elif isinstance(event, events.Progress):
                for key, done in event.done.items():
                    bars.update(key, done)
            elif isinstance(event, events.Retrying):
                bars.note(
                    f"{event.key[1]} (step {event.key[0]}): {event.reason}; try again in {event.delay_s:.1f}s"
                )
            elif isinstance(event, events.FileDone):
                bars.finish(event.key, event.size)
                finished[event.key] = event

        plans = download(plans, options, on_event)
    seconds = time.monotonic() - start
    rows = [
        _result_row(plan, f.remote.name, f.remote.size, f.on_disk, finished)
        for plan in plans
        for f in plan.files
    ]
    fetched = sum(r["fetched"] for r in rows)
    if json_output:
        ui.print_json(
            {
                "checkpoints": [{"step": p.step, "path": str(p.final)} for p in plans],
                "files": rows,
                "bytes_fetched": fetched,
                "seconds": round(seconds, 3),
            }
        )
    elif not quiet:
        _show_result(plans, rows, fetched, seconds)


def _result_row(
    plan: Any, name: str, size: int | None, on_disk: int, finished: dict[Any, Any]
) -> dict[str, Any]:
    done = finished.get((plan.step, name))
    if done is None:
        status, fetched, verified = "already there", 0, "-"
    else:
        status = "resumed" if on_disk else "downloaded"
        fetched, verified = done.fetched, done.verified_by
    return {
        "step": plan.step,
        "name": name,
        "size": size,
        "fetched": fetched,
        "status": status,
        "verified_by": verified,
    }


def _show_result(plans: list[Any], rows: list[dict[str, Any]], fetched: int, seconds: float) -> None:
    from olmo_cli import ui

    table = ui.table("Step", "File", "Size", "Fetched", "Status", "Verified by", right=("Size", "Fetched"))
    for r in rows:
        size = "?" if r["size"] is None else ui.human_bytes(r["size"])
        table.add_row(
            str(r["step"]), r["name"], size, ui.human_bytes(r["fetched"]), r["status"], r["verified_by"]
        )
    ui.console.print(table)
    if fetched:
        rate = fetched / seconds / 2**20 if seconds > 0 else 0.0
        ui.console.print(f"fetched {ui.human_bytes(fetched)} in {seconds:.1f}s ({rate:.1f} MiB/s)")
    else:
        ui.console.print("nothing to fetch: already downloaded")
    for plan in plans:
        ui.console.print(f"step {plan.step}: {plan.final}")
