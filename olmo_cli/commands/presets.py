"""`olmo presets list|show`: the shipped model presets and what follows from them."""

from __future__ import annotations

from typing import Annotated

import typer

from olmo_cli.commands._options import ConfigOption, JsonOption, SetOption, complete_preset

app = typer.Typer(
    help="The shipped presets (OLMo 1: tiny, 1b, 7b, ...; OLMo 2: olmo2-tiny, olmo2-1b, olmo2-7b, ...): "
    "list them, or show one resolved with its derived numbers.\n\nExamples:\n\n  olmo presets list\n\n"
    "  olmo presets show olmo2-7b --gpus 8",
    no_args_is_help=True,
)

GpusOption = Annotated[
    int,
    typer.Option("--gpus", "-g", min=1, help="GPUs to spread the model over (FSDP) for the memory estimate."),
]


@app.command("list")
def list_command(json_output: JsonOption = False) -> None:
    """List the presets with their size and training budget.

    Example: olmo presets list --json
    """
    from olmo_cli import ui
    from olmo_cli.config.derived import summarize
    from olmo_cli.config.loader import load_config
    from olmo_cli.config.presets import preset_names

    rows = []
    for name in preset_names():
        loaded = load_config(preset=name)
        info = loaded.preset
        published = info.training_tokens if info else None
        summary = summarize(loaded.config, published_tokens=published)
        rows.append((info.family if info else "", name, info.description if info else "", summary))
    if json_output:
        ui.print_json([{"name": n, "family": f, "description": d, **s.as_dict()} for f, n, d, s in rows])
        return
    # One section per family (OLMo 1, then OLMo 2), each from the smallest model up.
    rows.sort(key=lambda row: (row[0] or "~", row[3].params, row[1]))
    numeric = ("parameters", "layers", "d_model", "heads", "context", "training tokens")
    wide = ui.console.width >= 110  # the description only where it fits beside the numbers
    columns = (*numeric, "description") if wide else numeric
    table = ui.table("preset", *columns, title="Presets", right=numeric)
    for i, (family, name, description, s) in enumerate(rows):
        if i == 0 or family != rows[i - 1][0]:
            if i:
                table.add_section()
            table.add_row(f"[bold]{family or 'other'}[/bold]")
        heads = str(s.n_heads) if s.n_kv_heads == s.n_heads else f"{s.n_heads} (kv {s.n_kv_heads})"
        table.add_row(
            f"  {name}",
            ui.human_count(s.params),
            str(s.n_layers),
            str(s.d_model),
            heads,
            str(s.context_length),
            ui.human_count(s.training_tokens),
            *([description] if wide else []),
        )
    ui.console.print(table)


@app.command("show")
def show_command(
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME", help="Preset name.", autocompletion=complete_preset, show_default=False
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    gpus: GpusOption = 1,
    json_output: JsonOption = False,
) -> None:
    """Print a preset or config file fully resolved, with parameters, FLOPs and memory per GPU.

    Examples:

      olmo presets show 1b

      olmo presets show 7b --gpus 8 --set device_train_microbatch_size=4

      olmo presets show --config OLMo-7B-0724.yaml
    """
    from olmo_cli import ui
    from olmo_cli.config.derived import summarize
    from olmo_cli.config.loader import load_config
    from olmo_cli.config.yamlio import dump_yaml
    from olmo_cli.errors import UsageError

    if (name is None) == (config is None):
        # load_config's own message names --preset, which this command spells as a positional NAME.
        raise UsageError(
            "give a preset name or --config FILE" + ("" if name is None else ", not both"),
            hint="`olmo presets list` shows the presets; e.g. olmo presets show 1b",
        )
    loaded = load_config(preset=name, config_file=config, overrides=overrides or [])
    published = loaded.preset.training_tokens if loaded.preset else None
    summary = summarize(loaded.config, gpus=gpus, published_tokens=published)
    resolved = loaded.config.model_dump(mode="json")
    if json_output:
        ignored = [{"key": i.path, "value": i.value, "why": i.why} for i in loaded.ignored]
        ui.print_json(
            {
                "source": loaded.source,
                "config": resolved,
                "derived": summary.as_dict(),
                "not_acted_on": ignored,
            }
        )
        return
    ui.console.print(f"# {loaded.source}" + (f": {loaded.preset.description}" if loaded.preset else ""))
    ui.console.print(dump_yaml(resolved), end="", markup=False)
    ui.console.print(_derived_table(summary))
    ui.warn_ignored(loaded.ignored)


def _derived_table(s) -> object:  # noqa: ANN001 - a derived.Summary
    from olmo_cli import ui
    from olmo_cli.config.precision import PRECISIONS

    table = ui.table("derived", "value", title="Derived numbers", right=("value",))
    table.add_row("parameters", f"{s.params:,}")
    table.add_row("non-embedding parameters", f"{s.non_embedding_params:,}")
    table.add_row("tokens per step", f"{s.tokens_per_step:,}")
    table.add_row("training tokens", ui.human_count(s.training_tokens))
    table.add_row("training FLOPs per token (fwd + bwd)", f"{s.training_flops_per_token:,}")
    table.add_row("training FLOPs, whole run", ui.scientific(s.training_flops))
    m, precision = s.memory, PRECISIONS[s.precision]
    where = f"{s.world_size} GPU{'s' if s.world_size > 1 else ''}, FSDP, {precision.label}, AdamW"
    table.add_row(f"memory per GPU ({where})", ui.human_bytes(m.total), end_section=False)
    table.add_row("  master weights + grads + AdamW (sharded)", ui.human_bytes(m.sharded_states))
    table.add_row(f"  gathered {precision.short} parameters", ui.human_bytes(m.gathered_params))
    table.add_row("  activations (one micro-batch)", ui.human_bytes(m.activations))
    table.add_row("  logits (one micro-batch)", ui.human_bytes(m.logits))
    return table
