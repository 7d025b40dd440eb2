"""Options shared by several commands, declared once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


def complete_preset(incomplete: str) -> list[str]:
    from olmo_cli.config.presets import preset_names

    return [name for name in preset_names() if name.startswith(incomplete)]


PresetOption = Annotated[
    str | None,
    typer.Option(
        "--preset",
        "-p",
        help="A preset by name (see `olmo presets list`).",
        autocompletion=complete_preset,
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="A config YAML instead of a preset; upstream OLMo config files load as they are.",
        dir_okay=False,
        show_default=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        # Help text is rich markup: a bare [a.npy,b.npy] would be read as a style tag and vanish.
        help="Override one config value, e.g. --set model.n_layers=4 --set data.paths=\\[a.npy,b.npy] "
        "--set wandb=null. Repeatable; applied after the file, before interpolation.",
        metavar="KEY=VALUE",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
OverwriteOption = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace --output if it exists (once the new one is complete)."),
]


class Dtype(str, Enum):
    """Every --dtype's names (world.canonical_dtype reads them): auto, and each dtype short and long."""

    auto = "auto"
    fp32 = "fp32"
    float32 = "float32"
    bf16 = "bf16"
    bfloat16 = "bfloat16"
    fp16 = "fp16"
    float16 = "float16"


RunDeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available).", show_default=False),
]
DtypeOption = Annotated[
    Dtype,
    typer.Option(
        "--dtype", help="Weights and compute dtype (short or long name); auto is bf16 on GPU, fp32 on CPU."
    ),
]

# How tokens are picked: `olmo generate` and `olmo chat` (GenerationSettings in model/generate.py).
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate.")]
TemperatureOption = Annotated[
    float, typer.Option("--temperature", min=0.0, help="0 is greedy; higher samples more freely.")
]
TopKOption = Annotated[
    int | None,
    typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens.", show_default=False),
]
TopPOption = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        min=0.0,
        max=1.0,
        help="Sample from the smallest set holding this much probability.",
        show_default=False,
    ),
]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed for sampling.", show_default=False)]
StopOption = Annotated[
    list[str] | None,
    typer.Option(
        "--stop", help="Stop a completion at this text (not included). Repeatable.", show_default=False
    ),
]
