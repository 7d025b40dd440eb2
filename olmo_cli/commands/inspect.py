"""`olmo inspect-batch N`: the exact instances a training step reads, from config + data + data order."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import ConfigOption, PresetOption, SetOption

if TYPE_CHECKING:
    from olmo_cli.config.schema import TrainConfig
    from olmo_cli.data.batches import BatchEntry, BatchSource


class Format(str, Enum):
    text = "text"
    ids = "ids"
    json = "json"


def inspect_batch_command(
    batches: Annotated[
        str,
        typer.Argument(
            metavar="N|N..M",
            help="Global batch index (0-based; batch N is what optimizer step N+1 trains on), or an "
            "inclusive range N..M.",
            show_default=False,
        ),
    ],
    preset: PresetOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            metavar="DIR",
            help="A run directory (save_folder) or a checkpoint directory in it: its saved config.yaml is "
            "used, and its train_data/global_indices.npy unless --epoch, --data or --data-order-file "
            "is given.",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            metavar="PATH",
            help="Token data instead of data.paths: a directory from `olmo data tokenize`, files, globs or "
            "http(s) URLs. Repeatable.",
            show_default=False,
        ),
    ] = None,
    order_file: Annotated[
        str | None,
        typer.Option(
            "--data-order-file",
            metavar="PATH|URL",
            help="Read the order from this raw uint32 file (a path or URL, e.g. a published data-order file) "
            "instead of computing it.",
            show_default=False,
        ),
    ] = None,
    epoch: Annotated[
        int | None,
        typer.Option(
            "--epoch",
            min=0,
            help="Epoch to inspect (default: the config's epoch, else 0).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Format,
        typer.Option(
            "--format", "-f", help="text: decoded panels; ids: token ids; json: both plus metadata."
        ),
    ] = Format.text,
    instance: Annotated[
        int | None,
        typer.Option(
            "--instance",
            "-i",
            min=0,
            help="Show only this position within the batch (or within the rank's share, with --rank).",
            show_default=False,
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            "--rank",
            "-r",
            min=0,
            help="Show only this rank's share: positions r, r+W, r+2W, ...",
            show_default=False,
        ),
    ] = None,
    world_size: Annotated[
        int,
        typer.Option(
            "--world-size",
            "-w",
            min=1,
            help="Number of ranks (GPUs) the batch is split over; it also sets the epoch's padding (or "
            "truncation, with data.drop_last) as in training.",
        ),
    ] = 1,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "-t",
            help="Tokenizer for decoding (default: the config's tokenizer.identifier).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show every instance of global batch N: decoded text, token ids or JSON, with each instance's
    global index, source file and token offset.

    Examples:

      olmo inspect-batch 0 --preset tiny --data data/tokens

      olmo inspect-batch 3..5 --config run.yaml --format ids

      olmo inspect-batch 120 --run runs/olmo-tiny --rank 1 --world-size 8

      olmo inspect-batch 0 -c OLMo-1B.yaml --data-order-file https://host/global_indices.npy -f json
    """
    from olmo_cli import ui
    from olmo_cli.data.batches import default_cache_dir, open_batches, parse_batch_range, read_batch
    from olmo_cli.data.order import CACHE_MIN_INSTANCES
    from olmo_cli.errors import UsageError

    if rank is not None and rank >= world_size:
        raise UsageError(f"--rank {rank} needs --world-size above {rank}", hint="ranks are 0..W-1")
    selected = parse_batch_range(batches)
    cfg, run_order = _load(preset, config, overrides or [], run)
    if run_order is not None and order_file is None and epoch is None and not data:
        order_file = str(run_order)

    def computing(n: int) -> None:
        if n >= CACHE_MIN_INSTANCES:  # only where the wait is noticeable; the result is cached
            ui.err_console.print(f"computing the data order of {n:,} instances once (it is cached)...")

    source = open_batches(
        cfg,
        data_items=data,
        order_file=order_file,
        epoch=epoch,
        world_size=world_size,
        cache_dir=default_cache_dir(),
        on_compute=computing,
    )
    if selected[-1] >= source.num_batches:
        source.order.batch(selected[-1], source.batch_size)  # raises with the number of batches
    shown = [(b, read_batch(source, b, rank=rank, instance=instance)) for b in selected]
    if output is Format.json:
        ui.print_json(_as_json(source, shown, rank))
    elif output is Format.ids:
        typer.echo("\n".join(_id_line(entry) for _, entries in shown for entry in entries))
    else:
        _render_text(source, shown, rank, tokenizer or cfg.tokenizer.identifier)


def _load(
    preset: str | None, config: Path | None, overrides: list[str], run: Path | None
) -> tuple[TrainConfig, Path | None]:
    """The config, and the order file of the run it came from (None without --run)."""
    from olmo_cli.config.loader import load_config
    from olmo_cli.data.batches import run_files
    from olmo_cli.errors import CheckpointError, UsageError

    if run is None:
        return load_config(preset=preset, config_file=config, overrides=overrides).config, None
    if preset is not None or config is not None:
        raise UsageError("give --run DIR or --preset/--config, not both")
    files = run_files(run)
    loaded = load_config(config_file=files.config, overrides=overrides, file_error=CheckpointError)
    return loaded.config, files.order


def _as_json(source: BatchSource, shown: list[tuple[int, list[BatchEntry]]], rank: int | None) -> dict:
    def item(entry: BatchEntry) -> dict[str, Any]:
        inst = entry.instance
        out: dict[str, Any] = {
            "position": entry.position,
            "index": inst.index,
            "path": inst.path,
            "file_index": inst.file_index,
            "token_offset": inst.token_offset,
            "label": inst.label,
            "input_ids": inst.input_ids.tolist(),
        }
        if inst.label_mask is not None:
            out["label_mask"] = inst.label_mask.astype(int).tolist()
        return out

    return {
        "epoch": source.epoch,
        "seed": source.seed,
        "batch_size": source.batch_size,
        "seq_len": source.dataset.seq_len,
        "world_size": source.world_size,
        "rank": rank,
        "instances_in_data": len(source.dataset),
        "batches_in_epoch": source.num_batches,
        "order": source.order.source,
        "batches": [{"batch": b, "instances": [item(e) for e in entries]} for b, entries in shown],
    }


def _id_line(entry: BatchEntry) -> str:
    inst = entry.instance
    ids = " ".join(map(str, inst.input_ids.tolist()))
    return f"{entry.batch}\t{entry.position}\t{inst.index}\t{inst.path}\t{inst.token_offset}\t{ids}"


def _render_text(
    source: BatchSource, shown: list[tuple[int, list[BatchEntry]]], rank: int | None, identifier: str
) -> None:
    from rich.panel import Panel
    from rich.text import Text

    from olmo_cli import ui
    from olmo_cli.data.tokenizer import resolve_tokenizer
    from olmo_cli.errors import OlmoError

    try:
        tok = resolve_tokenizer(identifier)
    except OlmoError as e:
        also = "pass --tokenizer ID, or show ids with --format ids|json"
        e.hint = f"{e.hint}; or {also}" if e.hint else also
        raise
    share = f", rank {rank} of {source.world_size}" if rank is not None else ""
    ui.console.print(
        f"epoch {source.epoch}, {source.num_batches:,} batches of {source.batch_size} x "
        f"{source.dataset.seq_len} tokens{share}; order: {source.order.source}",
        markup=False,
    )
    for batch, entries in shown:
        for entry in entries:
            inst = entry.instance
            # Special tokens stay visible: EOS marks where one document ends and the next begins.
            body = Text(tok.decode(inst.input_ids.tolist(), skip_special_tokens=False))
            where = f"{inst.path} @ token {inst.token_offset:,}"
            if inst.label is not None:
                where = f"{inst.label}: {where}"
            if inst.label_mask is not None:
                where += f" · {int(inst.label_mask.sum())}/{len(inst.label_mask)} tokens in the loss"
            title = f"batch {batch} · position {entry.position} · instance {inst.index:,}"
            ui.console.print(
                Panel(body, title=title, subtitle=where, title_align="left", subtitle_align="left")
            )
