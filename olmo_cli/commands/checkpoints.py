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

# = the names of olmo_cli.hub.index.PUBLISHED (a test says so); here so --help never imports the engine
MODEL_NAMES = (
    "1b",
    "7b",
    "7b-twin-2t",
    "7b-0424",
    "7b-0724",
    "olmo2-1b",
    "olmo2-7b",
    "olmo2-13b",
    "olmo2-32b",
)

app = typer.Typer(
    help="The published intermediate checkpoints of OLMo 1 and OLMo 2: list them, download them."
    "\n\nExamples:\n\n  olmo checkpoints list --model 1b"
    "\n\n  olmo checkpoints list --model olmo2-7b --stage 2 --ingredient 1"
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
        help="A checkpoint index in upstream's format (CSV, header 'Step,Checkpoint Directory', or "
        "'Ingredient,Step,Checkpoint Directory' for OLMo 2's stage 2) instead of the model's published one.",
        show_default=False,
    ),
]
StageOption = Annotated[
    int | None,
    typer.Option(
        "--stage",
        min=1,
        max=2,
        metavar="1|2",
        help="OLMo 2's training stage: 1 (pretraining; the default) or 2 (the mid-training "
        "ingredients). With --source hf it filters the revisions by the stage in their names.",
        show_default=False,
    ),
]
IngredientOption = Annotated[
    str | None,
    typer.Option(
        "--ingredient",
        metavar="K",
        help="One ingredient of OLMo 2's stage 2 (1, 2, ...; 32B also has 'soup'): with --stage 2, or an "
        "--index with an Ingredient column, or --source hf.",
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


def _load_index(
    model: str | None, index: str | None, stage: int | None = None, ingredient: str | None = None
) -> CheckpointIndex:
    """The index (--index, else the model's published one for the stage), cut to `ingredient`'s rows."""
    from olmo_cli.hub.index import load_index, official_index_url

    location = index or official_index_url(_need_model(model), stage or 1)
    return load_index(location, cache_dir=_cache_dir()).select(ingredient)


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
            "revisions (branches such as step1000-tokens4B, stage1-step928646-tokens3896B).",
        ),
    ] = Source.official,
    stage: StageOption = None,
    ingredient: IngredientOption = None,
    preset: PresetOption = None,
    config: ConfigOption = None,
    run: RunOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the published checkpoints of a model: step, tokens trained on, and where it is.

    Tokens are the step times the preset's batch size in tokens (official source) or the figure in
    the Hugging Face branch name. The index is read once and cached (~/.cache/olmo/checkpoint-index).
    OLMo 2's stage 2 (--stage 2) is several runs, its ingredients, each with its own steps: the
    listing gets an Ingredient column, and --ingredient K keeps one.

    Examples:

      olmo checkpoints list --model 7b-0724

      olmo checkpoints list --model olmo2-7b --stage 2 --ingredient 1

      olmo checkpoints list --preset 1b --json

      olmo checkpoints list --model olmo2-13b --source hf --stage 2

      olmo checkpoints list --index my-mirror/OLMo-1B.csv
    """
    from olmo_cli import ui

    name = _resolve_model(model, preset, config, run)
    if source is Source.hf:
        rows, title = _hf_rows(_need_model(name), index, stage, ingredient)
    else:
        rows, title = _official_rows(name, index, stage, ingredient)
    if json_output:
        ui.print_json(rows)
        return
    with_ingredients = any(row.get("ingredient") is not None for row in rows)
    columns = (
        ("Ingredient", "Step", "Tokens", "Checkpoint")
        if with_ingredients
        else ("Step", "Tokens", "Checkpoint")
    )
    table = ui.table(*columns, title=title, right=("Step", "Tokens"))
    for row in rows:
        where = row.get("revision") or row.get("url")
        cells = ["-" if row["step"] is None else str(row["step"]), ui.human_count(row["tokens"]), where]
        table.add_row(*([row.get("ingredient") or "-"] if with_ingredients else []), *cells)
    ui.console.print(table)
    ui.console.print(f"{len(rows)} checkpoints", style="dim")


def _official_rows(
    model: str | None, index: str | None, stage: int | None, ingredient: str | None
) -> tuple[list[dict[str, Any]], str]:
    from olmo_cli.hub.index import tokens_per_step

    loaded = _load_index(model, index, stage, ingredient)
    per_step = tokens_per_step(model) if model else None  # stage 2 trains with stage 1's batch size
    rows = []
    for e in loaded.entries:
        row: dict[str, Any] = {"ingredient": e.ingredient} if loaded.has_ingredients else {}
        row.update(step=e.step, tokens=e.step * per_step if per_step else None, url=e.url)
        rows.append(row)
    return rows, f"Checkpoints in {loaded.source}"


def _hf_rows(
    model: str, index: str | None, stage: int | None, ingredient: str | None
) -> tuple[list[dict[str, Any]], str]:
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.hf import list_revisions
    from olmo_cli.hub.index import published_model

    if index is not None:
        raise UsageError("--index is for the official source, not --source hf")
    repo = published_model(model).hf_repo
    revisions = list_revisions(repo, endpoint=_hf_endpoint(), token=os.environ.get("HF_TOKEN") or None)
    if stage is not None:
        # OLMo 1's names (step{N}-tokens{T}) say no stage: it had one, so they are stage 1.
        revisions = [
            r
            for r in revisions
            if r.stage == stage or (stage == 1 and r.stage is None and r.step is not None)
        ]
    if ingredient is not None:
        chosen = [r for r in revisions if r.ingredient == ingredient]
        if not chosen:
            there = sorted({r.ingredient for r in revisions if r.ingredient is not None})
            raise UsageError(
                f"no revision of {repo} is of ingredient {ingredient!r}",
                details=[f"ingredients there: {', '.join(there) or 'none'}"],
                hint="pick one of those with --ingredient, or leave it out",
            )
        revisions = chosen
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
    stage: StageOption = None,
    ingredient: IngredientOption = None,
    source: Annotated[
        Source,
        typer.Option(
            "--source",
            help="official: the published index's checkpoint directories; hf: one revision of a Hugging "
            "Face repository (the model's, or --repo), every file of it.",
        ),
    ] = Source.official,
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            metavar="ORG/NAME",
            help="With --source hf: any Hugging Face model repository instead of the --model's.",
            show_default=False,
        ),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            metavar="NAME",
            help="With --source hf: the branch, tag or commit (default: main), e.g. "
            "stage1-step928646-tokens3896B; `olmo checkpoints list --source hf` lists them.",
            show_default=False,
        ),
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest",
            "-o",
            metavar="DIR",
            help="Where checkpoints go, as DIR/step{N}-unsharded/ (stage 2: "
            "DIR/stage2-ingredient{K}-step{N}-unsharded/; --source hf: DIR/REVISION/; default: "
            "checkpoints/MODEL, checkpoints/ORG--NAME with --repo, or checkpoints/ with --index alone).",
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

    OLMo 2's stage 2 (--stage 2) has ingredients that share step numbers: pick one with --ingredient
    K; it lands in DEST/stage2-ingredient{K}-step{N}-unsharded/. OLMo 2 32B's directories are
    OLMo-core's sharded format, which olmo does not download: use its Hugging Face revisions.

    --source hf downloads every file of one revision of a Hugging Face repository (the model's, or
    --repo ORG/NAME) into DEST/REVISION/, listed by the Hub's tree API and checked against its
    SHA-256 (LFS files) or git blob id; a converted repository's revision is a directory that `olmo
    convert-hf --from-hf`, `generate` and `eval` take. HF_ENDPOINT and HF_TOKEN are honoured.

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

      olmo checkpoints download --model olmo2-7b --stage 2 --ingredient 1 --step 11931 -o ckpts

      olmo checkpoints download --source hf --model olmo2-7b --revision stage1-step928646-tokens3896B

      olmo checkpoints download --source hf --repo allenai/OLMo-2-0425-1B --dest hf --dry-run

      olmo checkpoints download --preset 7b-0724 --latest --dry-run

      olmo checkpoints download --index mirror.csv --step 1000 --step 2000 -o ckpts --quiet
    """
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.download import DownloadOptions, plan_download

    options = DownloadOptions(
        jobs=jobs,
        chunk_size=_parse_size(chunk_size),
        hf_endpoint=_hf_endpoint(),
        hf_token=os.environ.get("HF_TOKEN") or None,
    )
    if source is Source.hf:
        if step or latest or index is not None or stage is not None or ingredient is not None:
            raise UsageError(
                "--source hf downloads one revision: give it with --revision NAME (default: main), not "
                "--step, --latest, --index, --stage or --ingredient",
                hint="`olmo checkpoints list --source hf --model NAME` lists the revisions with their steps",
            )
        plans = _plan_hf(repo, revision, dest, _resolve_model(model, preset, config, run), options)
    else:
        if repo is not None or revision is not None:
            raise UsageError("--repo and --revision are for --source hf", hint="add --source hf")
        if bool(step) == latest:
            raise UsageError(
                "give --step N (one or more) or --latest", hint="`olmo checkpoints list` shows the steps"
            )
        name = _resolve_model(model, preset, config, run)
        loaded = _load_index(name, index, stage, ingredient)
        entries = [loaded.latest()] if latest else [loaded.find(s) for s in dict.fromkeys(step or [])]
        _refuse_sharded(name, entries)
        plans = plan_download(entries, dest or Path("checkpoints", *([name] if name else [])), options)
    if dry_run:
        _show_plan(plans, json_output)
        return
    _download(plans, options, quiet=quiet, json_output=json_output)


def _plan_hf(
    repo: str | None, revision: str | None, dest: Path | None, model: str | None, options: Any
) -> list[CheckpointPlan]:
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.download import plan_revision
    from olmo_cli.hub.hf import check_repo
    from olmo_cli.hub.index import published_model

    if repo is not None and model is not None:
        raise UsageError(
            "give --repo or a model (--model, --preset, --config, --run), not both",
            hint="--repo names any Hugging Face repository; a model names its published one",
        )
    if repo is None:
        repo = published_model(_need_model(model)).hf_repo
    check_repo(repo)
    default = Path("checkpoints", model or repo.replace("/", "--"))
    return [plan_revision(repo, revision or "main", dest or default, options)]


def _refuse_sharded(model: str | None, entries: list[Any]) -> None:
    """OLMo-core's sharded directories: their files cannot be asked for by upstream's names, and their
    `.metadata` is a pickle, which olmo never loads from an untrusted source."""
    from olmo_cli.errors import UsageError
    from olmo_cli.hub.index import is_sharded_entry, published_model

    sharded = [e for e in entries if is_sharded_entry(model, e)]
    if not sharded:
        return
    assert model is not None
    first = sharded[0]
    stage = "stage2-ingredient{K}" if first.ingredient is not None else "stage1"
    raise UsageError(
        f"{model}'s checkpoint at step {first.step} is in OLMo-core's sharded format, which olmo does "
        "not download",
        details=[
            f"{first.url} is a torch.distributed.checkpoint directory (a .metadata pickle and "
            "__R_0.distcp shards), not upstream's unsharded files; olmo never unpickles a downloaded "
            ".metadata",
            f"the same checkpoints are revisions of {published_model(model).hf_repo} "
            f"({stage}-step{{N}}-tokens{{T}}B)",
        ],
        hint=f"use `olmo checkpoints download --source hf --model {model} --revision NAME` (`olmo "
        f"checkpoints list --source hf --model {model}` lists the names), or a converted Hugging Face "
        "repository with --source hf --repo ORG/NAME",
    )


def _label(plan: Any) -> str:
    """How a checkpoint is named to the user: its revision, or its step and ingredient."""
    if plan.revision is not None:
        return f"revision {plan.revision}"
    if plan.ingredient is not None:
        return f"ingredient {plan.ingredient} step {plan.step}"
    return f"step {plan.step}"


def _show_plan(plans: list[CheckpointPlan], json_output: bool) -> None:
    from olmo_cli import ui

    if json_output:
        ui.print_json([p.as_dict() for p in plans])
        return
    table = ui.table(
        "Checkpoint", "File", "Size", "On disk", "URL", title="Would download", right=("Size", "On disk")
    )
    for plan in plans:
        for f in plan.files:
            size = "?" if f.remote.size is None else ui.human_bytes(f.remote.size)
            table.add_row(plan.name, f.remote.name, size, ui.human_bytes(f.on_disk), f.remote.url)
    ui.console.print(table)
    total, missing = sum(p.size for p in plans), sum(p.missing for p in plans)
    ui.console.print(f"{ui.human_bytes(missing)} to fetch of {ui.human_bytes(total)}; nothing was downloaded")


def _download(plans: list[CheckpointPlan], options: Any, *, quiet: bool, json_output: bool) -> None:
    from olmo_cli import ui
    from olmo_cli.hub import events
    from olmo_cli.hub.download import download

    finished: dict[tuple[str, str], events.FileDone] = {}
    started: set[tuple[str, str]] = set()
    start = time.monotonic()
    with ui.transfers(enabled=not (quiet or json_output)) as bars:

        def on_event(event: events.DownloadEvent) -> None:
            if isinstance(event, events.FileStarted) and event.key in started:
                bars.update(event.key, event.on_disk)  # started again after the server was asked again
            elif isinstance(event, events.FileStarted):
                started.add(event.key)
                label = event.key[0].removesuffix("-unsharded")
                bars.add(event.key, f"{label} {event.key[1]}", event.size, event.on_disk)
            elif isinstance(event, events.Progress):
                for key, done in event.done.items():
                    bars.update(key, done)
            elif isinstance(event, events.Retrying):
                bars.note(
                    f"{event.key[1]} ({event.key[0]}): {event.reason}; try again in {event.delay_s:.1f}s"
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
                "checkpoints": [{**p.origin(), "path": str(p.final)} for p in plans],
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
    done = finished.get((plan.name, name))
    if done is None:
        status, fetched, verified = "already there", 0, "-"
    else:
        status = "resumed" if on_disk else "downloaded"
        fetched, verified = done.fetched, done.verified_by
    return {
        "step": plan.step,
        "checkpoint": plan.name,
        "name": name,
        "size": size,
        "fetched": fetched,
        "status": status,
        "verified_by": verified,
    }


def _show_result(plans: list[Any], rows: list[dict[str, Any]], fetched: int, seconds: float) -> None:
    from olmo_cli import ui

    table = ui.table(
        "Checkpoint", "File", "Size", "Fetched", "Status", "Verified by", right=("Size", "Fetched")
    )
    for r in rows:
        size = "?" if r["size"] is None else ui.human_bytes(r["size"])
        table.add_row(
            r["checkpoint"], r["name"], size, ui.human_bytes(r["fetched"]), r["status"], r["verified_by"]
        )
    ui.console.print(table)
    if fetched:
        rate = fetched / seconds / 2**20 if seconds > 0 else 0.0
        ui.console.print(f"fetched {ui.human_bytes(fetched)} in {seconds:.1f}s ({rate:.1f} MiB/s)")
    else:
        ui.console.print("nothing to fetch: already downloaded")
    for plan in plans:
        ui.console.print(f"{_label(plan)}: {plan.final}")
