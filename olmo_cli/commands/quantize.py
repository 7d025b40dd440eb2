"""`olmo quantize`: weight-only int8/int4 checkpoints, and GGUF files for llama.cpp."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from olmo_cli.commands._options import JsonOption, OverwriteOption

if TYPE_CHECKING:
    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.eval.quantized import Measurement


class Method(str, Enum):
    int8 = "int8"
    int4 = "int4"


class GgufType(str, Enum):
    f32 = "f32"
    f16 = "f16"
    q8_0 = "q8_0"
    q4_0 = "q4_0"


DEFAULT_GROUP_SIZE = 128


def quantize_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="A full-precision checkpoint: stepN-unsharded/, a sharded stepN/, a run folder (its latest) "
            "or a Hugging Face Olmo directory.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Directory to write (with --gguf: the .gguf file).", show_default=False
        ),
    ],
    method: Annotated[
        Method | None,
        typer.Option(
            "--method",
            "-m",
            help="int8: one scale per output channel. int4: group-wise scales and zeros, 2 weights a byte.",
            show_default=False,
        ),
    ] = None,
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            help=f"int4 group size: 32, 64, 128 or 256 \\[default: {DEFAULT_GROUP_SIZE}].",
            show_default=False,
        ),
    ] = None,
    embeddings: Annotated[
        bool,
        typer.Option(
            "--embeddings/--no-embeddings",
            help="Quantize the token embedding too (with tied weights it is also the output layer).",
        ),
    ] = True,
    gguf: Annotated[
        GgufType | None,
        typer.Option(
            "--gguf", help="Write a GGUF file for llama.cpp instead, of this type.", show_default=False
        ),
    ] = None,
    eval_data: Annotated[
        list[str] | None,
        typer.Option(
            "--eval",
            metavar="DATA",
            help="Token files or a directory (olmo data tokenize): report perplexity and generation "
            "tokens/s before and after. Repeatable.",
            show_default=False,
        ),
    ] = None,
    eval_batches: Annotated[
        int | None,
        typer.Option(
            "--eval-batches",
            min=1,
            help="Score at most this many batches of 8 windows \\[default: all].",
            show_default=False,
        ),
    ] = None,
    overwrite: OverwriteOption = False,
    json_output: JsonOption = False,
) -> None:
    """Shrink a checkpoint: weight-only int8/int4 (loads in olmo generate / olmo eval) or a GGUF file.

    Every Linear weight is quantized (and the embedding, unless --no-embeddings); the result is a
    checkpoint directory that `olmo generate` and `olmo eval` load as they load any other.

    Examples:

      olmo quantize runs/olmo-tiny --method int8 --output runs/olmo-tiny-int8

      olmo quantize runs/olmo-tiny --method int4 --group-size 64 --output tiny-int4 --eval data/val

      olmo quantize runs/olmo-tiny --gguf q8_0 --output olmo-tiny-q8_0.gguf
    """
    from olmo_cli.errors import UsageError

    if (method is None) == (gguf is None):
        raise UsageError("give --method int8|int4 or --gguf f16|q8_0|q4_0 (one of them)")
    if gguf is not None:
        if eval_data or group_size is not None or not embeddings:
            raise UsageError("--eval, --group-size and --no-embeddings apply to --method, not --gguf")
        _gguf(checkpoint, output, gguf.value, overwrite, json_output)
        return
    assert method is not None
    if method is Method.int8 and group_size is not None:
        raise UsageError("--group-size applies to int4; int8 has one scale per output channel")
    group = (group_size or DEFAULT_GROUP_SIZE) if method is Method.int4 else None
    _native(
        checkpoint, output, method.value, group, embeddings, eval_data, eval_batches, overwrite, json_output
    )


def _read_full_precision(checkpoint: Path) -> CheckpointWeights:
    from olmo_cli import ui
    from olmo_cli.load.build import require_full_precision
    from olmo_cli.load.read import read_checkpoint

    found = read_checkpoint(checkpoint)
    require_full_precision(found, "quantizing")
    for warning in found.warnings:
        ui.warn(warning)
    return found


def _native(
    checkpoint: Path,
    output: Path,
    method: str,
    group: int | None,
    embeddings: bool,
    eval_data: list[str] | None,
    eval_batches: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    from olmo_cli import ui
    from olmo_cli.atomic import check_output_dir
    from olmo_cli.config.yamlio import dump_config
    from olmo_cli.errors import OlmoError, UsageError
    from olmo_cli.eval.quantized import eval_source
    from olmo_cli.load.build import load_tokenizer
    from olmo_cli.quant.checkpoint import write_quantized
    from olmo_cli.quant.model import quantize_state
    from olmo_cli.quant.settings import QuantLayout, QuantSettings

    try:
        settings = QuantSettings(method, group, embeddings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    check_output_dir(output, overwrite)
    found = _read_full_precision(checkpoint)
    dataset = eval_source(eval_data, found.config) if eval_data else None  # bad data fails before the work
    try:
        tokenizer_json: str | None = load_tokenizer(found).json_text
    except OlmoError as e:  # the weights still quantize; say what is missing
        ui.warn(f"tokenizer not copied into {output}: {e.message}")
        tokenizer_json = None
    with ui.progress(f"quantizing to {method}", None, enabled=not as_json) as update:
        tensors, modules = quantize_state(
            found.state, found.config.model, settings, lambda done, total: update(done, total=total)
        )
    layout = QuantLayout(settings, modules, source=str(found.path.resolve()))
    text = dump_config(found.config)
    path = write_quantized(
        output,
        tensors=tensors,
        layout=layout,
        config_yaml_text=text,
        tokenizer_json=tokenizer_json,
        overwrite=overwrite,
    )
    del tensors
    summary = _summary(found, path, layout)
    if dataset is not None:
        summary["eval"] = _compare(found, path, dataset, eval_batches, as_json)
    _show(summary, as_json)


def _summary(found: CheckpointWeights, path: Path, layout: Any) -> dict[str, Any]:
    from olmo_cli.eval.quantized import weights_bytes
    from olmo_cli.quant.settings import WEIGHTS_FILE

    before, after = weights_bytes(found), (path / WEIGHTS_FILE).stat().st_size
    methods = sorted(set(layout.modules.values()))
    return {
        "source": str(found.path),
        "output": str(path),
        "format": "olmo-quant",
        "method": layout.settings.method,
        "group_size": layout.settings.group_size,
        "embeddings": layout.settings.embeddings,
        "modules": {m: sum(1 for v in layout.modules.values() if v == m) for m in methods},
        "size": {"before_bytes": before, "after_bytes": after, "ratio": round(after / before, 4)},
    }


def _compare(
    found: CheckpointWeights, path: Path, dataset: Any, eval_batches: int | None, as_json: bool
) -> dict[str, Any]:
    """Measures the source model, frees it, then measures the quantized one as `load_model` gives it."""
    from olmo_cli import ui
    from olmo_cli.eval.quantized import common_prefix, measure
    from olmo_cli.load.build import load_model
    from olmo_cli.load.read import read_checkpoint

    with ui.progress("measuring before and after", 2, enabled=not as_json) as update:
        before = measure(load_model(found), dataset, max_batches=eval_batches)
        update(1)
        after = measure(load_model(read_checkpoint(path)), dataset, max_batches=eval_batches)
        update(2)
    return {
        "perplexity_definition": "token-weighted, as olmo eval --perplexity",
        "tokens": before.tokens,
        "before": _measured(before),
        "after": _measured(after),
        "perplexity_change": round(after.perplexity / before.perplexity - 1, 6),
        "greedy_tokens_matching": common_prefix(before.greedy, after.greedy),
        "greedy_tokens": len(before.greedy),
    }


def _measured(m: Measurement) -> dict[str, Any]:
    return {
        "cross_entropy": round(m.cross_entropy, 6),
        "perplexity": round(m.perplexity, 4),
        "tokens_per_second": {str(b): round(v, 2) for b, v in m.tokens_per_second.items()},
    }


def _show(summary: dict[str, Any], as_json: bool) -> None:
    from olmo_cli import ui

    if as_json:
        ui.print_json(summary)
        return
    size = summary["size"]
    table = ui.table("", "before", "after", "change", right=("before", "after", "change"))
    table.add_row(
        "size on disk",
        ui.human_bytes(size["before_bytes"]),
        ui.human_bytes(size["after_bytes"]),
        f"{100 * size['ratio']:.1f}%",
    )
    ev = summary.get("eval")
    if ev is not None:
        b, a = ev["before"], ev["after"]
        table.add_row(
            "perplexity, token-weighted",
            f"{b['perplexity']:.3f}",
            f"{a['perplexity']:.3f}",
            f"{100 * ev['perplexity_change']:+.2f}%",
        )
        for batch, speed in b["tokens_per_second"].items():
            after = a["tokens_per_second"][batch]
            table.add_row(
                f"generate tokens/s (batch {batch})", f"{speed:.1f}", f"{after:.1f}", f"{after / speed:.2f}x"
            )
        table.add_row(
            "greedy tokens matching", "", f"{ev['greedy_tokens_matching']}/{ev['greedy_tokens']}", ""
        )
    label = summary.get("method") or summary.get("gguf")
    ui.console.print(f"wrote {summary['output']} ({label}, from {summary['source']})", markup=False)
    ui.console.print(table)
    if "gguf" not in summary:
        ui.console.print(f"try it: olmo generate {summary['output']} --prompt 'Hello'", markup=False)


def _gguf(checkpoint: Path, output: Path, file_type: str, overwrite: bool, as_json: bool) -> None:
    from olmo_cli import ui
    from olmo_cli.atomic import check_output_file
    from olmo_cli.errors import UsageError
    from olmo_cli.eval.quantized import weights_bytes
    from olmo_cli.load.build import load_tokenizer
    from olmo_cli.quant.gguf_export import write_gguf

    check_output_file(output)  # before reading and converting the weights
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} already exists", hint="pass --overwrite")
    found = _read_full_precision(checkpoint)
    tokenizer = load_tokenizer(found)  # a GGUF file without its vocabulary runs nowhere
    with ui.progress(f"writing GGUF {file_type}", None, enabled=not as_json) as update:
        result = write_gguf(
            found,
            tokenizer,
            output,
            file_type=file_type,
            overwrite=overwrite,
            progress=lambda done, total: update(done, total=total),
        )
    for warning in result.warnings:
        ui.warn(warning)
    before = weights_bytes(found)
    types = sorted(set(result.tensor_types.values()))
    summary = {
        "source": str(found.path),
        "output": str(result.path),
        "format": "gguf",
        "gguf": file_type,
        "architecture": "olmo",
        "tensor_types": {t: sum(1 for v in result.tensor_types.values() if v == t) for t in types},
        "size": {
            "before_bytes": before,
            "after_bytes": result.bytes,
            "ratio": round(result.bytes / before, 4),
        },
    }
    _show(summary, as_json)
    if not as_json:
        ui.console.print(f"run it with llama.cpp: llama-cli -m {result.path} -p 'Hello'", markup=False)
