"""`olmo convert-hf`: native (or upstream) checkpoint <-> Hugging Face transformers Olmo / Olmo2 directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from olmo_cli.commands._options import Dtype, JsonOption, OverwriteOption


def convert_hf_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="Native or upstream checkpoint (stepN-unsharded/, a sharded stepN/, or a run folder: its "
            "latest). With --from-hf: a Hugging Face Olmo model directory.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Directory to write.", file_okay=False, show_default=False),
    ],
    from_hf: Annotated[
        bool,
        typer.Option(
            "--from-hf",
            help="Convert a Hugging Face Olmo directory into the native unsharded layout (which resume, "
            "finetune, eval and generate take).",
        ),
    ] = False,
    max_shard_size: Annotated[
        str,
        typer.Option(help="Split the weights into safetensors files of at most this size, with an index."),
    ] = "5GB",
    dtype: Annotated[
        Dtype,
        typer.Option(
            help="Weight dtype of the Hugging Face export, short or long name; auto keeps the checkpoint's "
            "float32 (native checkpoints hold float32)."
        ),
    ] = Dtype.auto,
    overwrite: OverwriteOption = False,
    json_output: JsonOption = False,
) -> None:
    """Convert between a native OLMo checkpoint and a Hugging Face transformers directory: OLMo 1 models as
    OlmoForCausalLM (model_type olmo), OLMo 2 models (norms after attention and MLP, QK-norm) as
    Olmo2ForCausalLM (model_type olmo2).

    The export loads with transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained(DIR), no remote
    code; converting back gives bit-identical weights.

    Examples:

      olmo convert-hf runs/olmo-tiny/step300-unsharded --output hf/olmo-tiny

      olmo convert-hf runs/olmo-tiny --output hf/olmo-tiny --dtype bfloat16 --max-shard-size 2GB

      olmo convert-hf --from-hf ~/models/OLMo-1B-hf --output ckpt/OLMo-1B/step0-unsharded

      olmo convert-hf --from-hf ~/models/OLMo-2-1124-7B --output ckpt/OLMo-2-7B/main-unsharded
    """
    from olmo_cli.atomic import check_output_dir

    check_output_dir(output, overwrite)  # before reading gigabytes of weights
    if from_hf:
        _import(checkpoint, output, dtype, overwrite, json_output)
    else:
        _export(checkpoint, output, max_shard_size, _export_dtype(dtype), overwrite, json_output)


def _export(
    checkpoint: Path, output: Path, max_shard_size: str, dtype: str, overwrite: bool, as_json: bool
) -> None:
    from olmo_cli import ui
    from olmo_cli.convert.export import export_hf, parse_size
    from olmo_cli.errors import OlmoError, UsageError
    from olmo_cli.load.build import load_tokenizer, require_full_precision
    from olmo_cli.load.read import read_checkpoint

    max_bytes = parse_size(max_shard_size)
    found = read_checkpoint(checkpoint)
    require_full_precision(found, "olmo convert-hf")
    if found.kind == "hf":
        raise UsageError(
            f"{found.path} is already a Hugging Face directory",
            hint="to convert it into the native layout, add --from-hf",
        )
    try:
        tokenizer = load_tokenizer(found)
    except OlmoError as e:  # the weights still convert; say what is missing
        ui.warn(f"tokenizer {found.config.tokenizer.identifier}: {e.message}")
        tokenizer = None
    with ui.progress("writing safetensors", None, enabled=not as_json) as update:
        result = export_hf(
            found,
            tokenizer,
            output,
            max_shard_bytes=max_bytes,
            dtype=dtype,
            overwrite=overwrite,
            progress=lambda done, total: update(done, total=total),
        )
    for warning in result.warnings:
        ui.warn(warning)
    summary = {
        "source": str(found.path),
        "source_kind": found.kind,
        "output": str(result.path),
        "format": "huggingface",
        "dtype": result.dtype,
        "weight_files": result.shards,
        "weight_bytes": result.total_bytes,
        "tokenizer": tokenizer.identity.identifier if tokenizer else None,
    }
    if as_json:
        ui.print_json(summary)
        return
    ui.console.print(
        f"wrote {result.path} ({result.shards} safetensors file{'s' if result.shards > 1 else ''}, "
        f"{ui.human_bytes(result.total_bytes)} {result.dtype}, from {found.kind} {found.path})",
        markup=False,
    )
    ui.console.print(
        f"load it with: transformers.AutoModelForCausalLM.from_pretrained({str(result.path)!r})", markup=False
    )


def _export_dtype(dtype: Dtype) -> str:
    from olmo_cli.world import canonical_dtype

    name = canonical_dtype(dtype.value)
    return "float32" if name == "auto" else name


def _import(checkpoint: Path, output: Path, dtype: Dtype, overwrite: bool, as_json: bool) -> None:
    from olmo_cli import ui
    from olmo_cli.convert.import_hf import read_hf, write_native
    from olmo_cli.errors import UsageError

    if _export_dtype(dtype) != "float32":
        raise UsageError(
            "--dtype applies to the Hugging Face export; native checkpoints hold float32 weights"
        )
    found = read_hf(checkpoint)
    for warning in found.warnings:
        ui.warn(warning)
    path = write_native(found, output, overwrite=overwrite)
    cfg = found.config.model
    summary = {
        "source": str(found.path),
        "output": str(path),
        "format": "native-unsharded",
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "parameters": sum(t.numel() for t in found.model.values()),
        "tokenizer": found.config.tokenizer.identifier,
    }
    if as_json:
        ui.print_json(summary)
        return
    ui.console.print(
        f"wrote {path} (native unsharded: config.yaml, model.safetensors; "
        f"{ui.human_count(summary['parameters'])} parameters)",
        markup=False,
    )
    ui.console.print(f"try it: olmo generate {path} --prompt 'Hello'", markup=False)
