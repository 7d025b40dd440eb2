"""`olmo finetune` (a run that starts from a checkpoint's weights) and `olmo finetune merge` (a LoRA
adapter folded into its base). Options and rendering here; the config in olmo_cli.train.finetune, the
training in olmo_cli.train.run, as for `olmo train`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import ConfigOption, JsonOption, OverwriteOption, PresetOption, SetOption
from olmo_cli.commands.train import DeviceOption, NoWandbOption, NprocOption

if TYPE_CHECKING:
    from olmo_cli.checkpoint.weights import CheckpointConfig
    from olmo_cli.config.schema import TrainConfig

LORA_TARGETS = ("att_proj", "attn_out", "ff_proj", "ff_out")

DataOption = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        "-d",
        metavar="PATH",
        help="The finetuning data: a directory from `olmo data tokenize` (--chat for label masks), files, "
        "globs or http(s) URLs. Repeatable. Required unless --config names data.paths.",
        show_default=False,
    ),
]

# The group's help is the callback's docstring: `olmo finetune` itself is the finetune command.
app = typer.Typer(invoke_without_command=True)


def _complete_target(incomplete: str) -> list[str]:
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [prefix + t for t in LORA_TARGETS if t.startswith(last) and t not in done.split(",")]


@app.callback()
def finetune_command(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-k",
            metavar="CKPT",
            help="The weights to start from: a checkpoint of ours (stepN-unsharded/, stepN/ or a run "
            "folder: its latest), an upstream stepN-unsharded/ (olmo checkpoints download), or a Hugging "
            "Face Olmo directory.",
            show_default=False,
        ),
    ] = None,
    data: DataOption = None,
    preset: PresetOption = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    save_folder: Annotated[
        Path | None,
        typer.Option(
            "--save-folder",
            "-o",
            help="The run directory (default: runs/<base run name>-finetune, or -lora).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    lora_rank: Annotated[
        int | None,
        typer.Option(
            "--lora-rank", min=1, help="Finetune with LoRA adapters of this rank.", show_default=False
        ),
    ] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option(
            "--lora-alpha", min=0.0, help="LoRA scale numerator (default: 2 x rank).", show_default=False
        ),
    ] = None,
    lora_dropout: Annotated[
        float | None,
        typer.Option(
            "--lora-dropout",
            min=0.0,
            max=0.99,
            help="Dropout on the adapters' input (default 0).",
            show_default=False,
        ),
    ] = None,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            "--lora-targets",
            metavar="LIST",
            help="Comma-separated Linear layers of each block to adapt (default: "
            "att_proj,attn_out,ff_proj,ff_out).",
            autocompletion=_complete_target,
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
    no_wandb: NoWandbOption = False,
    nproc_per_node: NprocOption = 1,
    device: DeviceOption = None,
) -> None:
    """Finetune a checkpoint on token data, e.g. chats from `olmo data tokenize --chat`: only the tokens
    the label masks mark (the assistant's replies) count for the loss.

    The weights alone are loaded (upstream's load_path + reset_trainer_state + reset_optimizer_state):
    step 0, a fresh optimizer and schedule. The model comes from the checkpoint; a --preset or --config
    whose architecture differs is an error (exit 2). Otherwise this is `olmo train`: FSDP with
    --nproc-per-node, checkpoints, metrics.jsonl, wandb, one job per save folder, exit code 75 when
    SIGINT/SIGTERM stopped it after saving a checkpoint; `olmo resume DIR` continues it.

    Defaults, each overridable with --set: optimizer AdamW, learning_rate 2e-5 (1e-4 with LoRA),
    weight_decay 0; scheduler linear_with_warmup, warmup 3% of the steps, decaying to 0 (alpha_f 0);
    max_duration 2ep; max_grad_norm 1.0; no evaluators, no wandb (--set wandb.project=NAME). Batch sizes,
    precision and FSDP settings come from the checkpoint's config (or the preset / config).

    With --lora-rank R only the adapters train (the base stays bit-identical); the run writes
    adapter.safetensors (with its settings) to its folder and every checkpoint. `olmo finetune merge`
    turns it into full weights that every command takes.

    Examples:

      olmo finetune --checkpoint runs/olmo-tiny --data data/sft

      olmo finetune -k ckpts/OLMo-1B/step20000-unsharded --data data/tulu --set global_train_batch_size=128

      olmo finetune -k hf/OLMo-1B-hf --data data/tulu --lora-rank 16 --nproc-per-node 8

      olmo resume runs/olmo-tiny-finetune
    """
    if ctx.invoked_subcommand is not None:
        return
    if checkpoint is None:
        from olmo_cli.errors import UsageError

        raise UsageError(
            "olmo finetune needs --checkpoint CKPT",
            hint="olmo finetune --checkpoint runs/olmo-tiny --data data/sft (see olmo finetune --help)",
        )
    import os

    from olmo_cli.commands.train import is_main_process, relaunch_if_asked, run_training
    from olmo_cli.train.finetune import FinetuneRequest, build_finetune_config

    request = FinetuneRequest(
        checkpoint=checkpoint,
        data=tuple(data or ()),
        preset=preset,
        config_file=config,
        overrides=tuple(overrides or ()),
        save_folder=save_folder,
        lora=_lora_settings(lora_rank, lora_alpha, lora_dropout, lora_targets),
        world_size=int(os.environ.get("WORLD_SIZE") or nproc_per_node),
    )
    cfg, base = build_finetune_config(request)
    relaunch_if_asked(nproc_per_node, Path(cfg.save_folder))
    from olmo_cli.train.run import RunOptions

    if is_main_process() and not json_output:
        _announce(cfg, base)
    options = RunOptions(device=device.value if device else None, wandb=not no_wandb)
    run_training(cfg, options, json_output)


def _lora_settings(
    rank: int | None, alpha: float | None, dropout: float | None, targets: str | None
) -> dict[str, Any] | None:
    from olmo_cli.errors import UsageError

    if rank is None:
        given = [
            n for n, v in (("alpha", alpha), ("dropout", dropout), ("targets", targets)) if v is not None
        ]
        if given:
            raise UsageError(
                f"--lora-{given[0]} without --lora-rank", hint="give --lora-rank R to finetune with LoRA"
            )
        return None
    settings: dict[str, Any] = {"rank": rank, "alpha": alpha if alpha is not None else 2.0 * rank}
    if dropout is not None:
        settings["dropout"] = dropout
    if targets is not None:
        names = [t.strip() for t in targets.split(",") if t.strip()]
        unknown = [t for t in names if t not in LORA_TARGETS]
        if unknown or not names:
            raise UsageError(
                f"--lora-targets {targets!r}: unknown layer {unknown[0] if unknown else '(none given)'}",
                hint=f"a comma-separated list of {', '.join(LORA_TARGETS)}",
            )
        settings["targets"] = names
    return settings


def _announce(cfg: TrainConfig, base: CheckpointConfig) -> None:
    """What is about to happen, in the words of the finetune (the live display shows the run)."""
    from olmo_cli import ui

    opt, sched = cfg.optimizer, cfg.scheduler
    ui.console.print(
        f"finetuning {base.path} ({base.kind}): lr {opt.learning_rate:g}, {sched.name} with "
        f"{sched.t_warmup} warmup steps to alpha_f {sched.alpha_f:g}, max_duration {cfg.max_duration}, "
        f"stop_at {cfg.stop_at}",
        highlight=False,
    )
    if cfg.lora is not None:
        trainable, total = _lora_counts(cfg)
        ui.console.print(
            f"LoRA rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g} on {','.join(cfg.lora.targets)}: "
            f"{trainable:,} of {total:,} parameters train ({trainable / total:.3%})",
            highlight=False,
        )
    if not _has_label_masks(cfg):
        ui.warn("the data has no label masks: every token counts for the loss (tokenize chats with --chat)")


def _lora_counts(cfg: TrainConfig) -> tuple[int, int]:
    from olmo_cli.model.lora import apply_lora, parameter_counts
    from olmo_cli.model.olmo import build_model

    model = build_model(cfg.model, "meta")
    apply_lora(model, cfg.lora)  # type: ignore[arg-type]
    return parameter_counts(model)


def _has_label_masks(cfg: TrainConfig) -> bool:
    from olmo_cli.data.dataset import build_dataset

    return build_dataset(cfg.data, cfg.model.max_sequence_length).label_mask_paths is not None


@app.command("merge")
def merge_command(
    adapter: Annotated[
        Path,
        typer.Argument(
            metavar="ADAPTER",
            help="adapter.safetensors of a LoRA run, or the run folder / checkpoint holding one.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Directory to write.", file_okay=False, show_default=False),
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-k",
            metavar="BASE",
            help="The base the adapter was trained on (any checkpoint kind; default: the one the adapter "
            "records).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Merge even if BASE's weights are not the ones the adapter records."),
    ] = False,
    overwrite: OverwriteOption = False,
    json_output: JsonOption = False,
) -> None:
    """Fold a LoRA adapter into its base: W + (alpha/rank) B A, in fp32. The output is a native unsharded
    checkpoint (config.yaml, model.safetensors) that generate, eval, convert-hf and finetune take.

    Examples:

      olmo finetune merge runs/olmo-tiny-lora --checkpoint runs/olmo-tiny --output ckpt/tiny-merged

      olmo finetune merge runs/OLMo-1B-hf-lora/adapter.safetensors -k hf/OLMo-1B-hf -o ckpt/merged --json
    """
    from olmo_cli import ui
    from olmo_cli.atomic import check_output_dir
    from olmo_cli.load.adapter import merge_adapter, read_adapter_base

    check_output_dir(output, overwrite)  # before reading the base
    base = read_adapter_base(adapter, checkpoint)
    result = merge_adapter(adapter, base, output, force=force, overwrite=overwrite)
    for warning in result.warnings:
        ui.warn(warning)
    summary = {
        "output": str(result.output),
        "base": str(result.base),
        "adapter": str(result.adapter),
        "modules": result.modules,
        **result.settings.model_dump(mode="json"),
    }
    if json_output:
        ui.print_json(summary)
        return
    ui.console.print(
        f"merged {result.adapter} (rank {result.settings.rank}, {result.modules} layers) into "
        f"{result.base} -> {result.output}",
        highlight=False,
    )
