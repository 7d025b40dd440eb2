"""`olmo soup`: the weighted average of checkpoints of one model. The work is in olmo_cli.load.soup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from olmo_cli.commands._options import JsonOption, OverwriteOption


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of numbers such as 0.5,0.25,0.25"
        ) from None


def soup_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            metavar="CKPT",
            help="Two or more checkpoints of one model: ours or upstream's (stepN-unsharded/, sharded "
            "stepN/, a run folder: its latest) or Hugging Face directories.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The checkpoint directory to write.", file_okay=False, show_default=False
        ),
    ],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            metavar="W1,W2,...",
            help="One relative weight per checkpoint, in order (divided by their sum). Default: the plain "
            "mean, as OLMo 2's released models average their stage-2 ingredients.",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOption = False,
    json_output: JsonOption = False,
) -> None:
    """Average checkpoints of one model ("model soup") into a checkpoint every command takes.

    The soup is sum_i w_i * theta_i / sum_i w_i, computed tensor by tensor in float64 and stored as
    float32 (so the soup of copies of one checkpoint is that checkpoint, bit for bit). Checkpoints must
    share the architecture and the tokenizer: the first difference is named. Memory holds about one
    tensor per checkpoint at a time (model.safetensors is streamed); model.pt, sharded and Hugging Face
    checkpoints are read whole once, one at a time. The output records its ingredients in soup.json.

    Examples:

      olmo soup ckpts/ingredient1 ckpts/ingredient2 ckpts/ingredient3 --output ckpts/soup

      olmo soup runs/a/step1000-unsharded runs/b/step1000-unsharded --weights 0.7,0.3 -o runs/soup
    """
    from olmo_cli import ui
    from olmo_cli.atomic import check_output_dir
    from olmo_cli.load.soup import make_soup, plan_soup

    check_output_dir(output, overwrite)  # before reading any ingredient
    ingredients = plan_soup(list(checkpoints), _parse_weights(weights))
    with ui.progress("averaging", None, enabled=not json_output) as update:
        result = make_soup(
            ingredients, output, overwrite=overwrite, progress=lambda done, total: update(done, total=total)
        )
    for warning in result.warnings:
        ui.warn(warning)
    total_weight = sum(ing.weight for ing in result.ingredients)
    rows = [
        {"path": str(ing.path), "kind": ing.kind, "weight": ing.weight, "share": ing.weight / total_weight}
        for ing in result.ingredients
    ]
    if json_output:
        ui.print_json(
            {
                "output": str(result.path),
                "tensors": result.tensors,
                "bytes": result.bytes,
                "ingredients": rows,
            }
        )
        return
    table = ui.table("ingredient", "kind", "share", title=f"Soup {result.path}", right=("share",))
    for row in rows:
        table.add_row(row["path"], row["kind"], f"{row['share']:.4f}")
    ui.console.print(table)
    ui.console.print(
        f"wrote {result.path}: {result.tensors} tensors, {ui.human_bytes(result.bytes)} float32", markup=False
    )
