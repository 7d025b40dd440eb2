"""The quantized checkpoint directory, written atomically and read back with every check.

    DIR/
      config.yaml             the source checkpoint's config (the model's shape)
      quantized.safetensors   packed weights, scales, zeros and full-precision tensors (plain names)
      quantization.json       method, group size, modules, format version (also in the safetensors header)
      tokenizer.json          the tokenizer, so the directory is self-contained

`olmo generate` and `olmo eval` read it through `olmo_cli.load` like any checkpoint; training
commands refuse it (`olmo_cli.load.read.refuse_kinds`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from olmo_cli.atomic import check_output_dir, disk_full_error, fsync_dir, give_umask_mode, is_disk_full
from olmo_cli.checkpoint._files import fsync_file
from olmo_cli.checkpoint.layout import CONFIG_FILE, TOKENIZER_FILE
from olmo_cli.errors import CheckpointError
from olmo_cli.quant.settings import METADATA_KEY, SETTINGS_FILE, WEIGHTS_FILE, QuantLayout

__all__ = ["QuantizedFiles", "read_quantized_files", "write_quantized"]


def write_quantized(
    output: Path | str,
    *,
    tensors: dict[str, torch.Tensor],
    layout: QuantLayout,
    config_yaml_text: str,
    tokenizer_json: str | None,
    overwrite: bool = False,
) -> Path:
    """Writes the directory beside `output`, then renames it into place (replacing an old one only with
    `overwrite`, and only once the new one is complete)."""
    from safetensors.torch import save_file

    output = Path(output)
    check_output_dir(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        # One metadata key only: the header's metadata map has no fixed order, and the bytes must not
        # change from run to run.
        metadata = {METADATA_KEY: json.dumps(layout.as_dict(), sort_keys=True)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / WEIGHTS_FILE, metadata=metadata)
        give_umask_mode(tmp / WEIGHTS_FILE)
        files = {SETTINGS_FILE: layout.to_json(), CONFIG_FILE: config_yaml_text}
        if tokenizer_json is not None:
            files[TOKENIZER_FILE] = tokenizer_json
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name in [WEIGHTS_FILE, *files]:
            fsync_file(tmp / name)
        fsync_dir(tmp)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{secrets.token_hex(4)}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(output, sum(t.nbytes for t in tensors.values())) from None
        raise
    fsync_dir(output.parent)
    return output


@dataclass
class QuantizedFiles:
    layout: QuantLayout
    tensors: dict[str, torch.Tensor]
    tokenizer_file: Path | None
    warnings: list[str] = field(default_factory=list)


def _header_layout(weights: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            text = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as e:  # noqa: BLE001 - any damage to the file reads as one message
        raise CheckpointError(f"{weights} is not a readable safetensors file: {e}") from None
    if not text:
        return None
    try:
        found = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{weights}: its quantization metadata is not valid JSON") from None
    return found if isinstance(found, dict) else None


def read_quantized_files(path: Path | str) -> QuantizedFiles:
    """The record and tensors of a quantized checkpoint, after checking they belong together (the tensors
    are checked against the model config by the caller, who knows the config)."""
    from safetensors.torch import load_file

    path = Path(path)
    settings_file, weights = path / SETTINGS_FILE, path / WEIGHTS_FILE
    from olmo_cli.untrusted import read_json_text

    text = read_json_text(settings_file, limit=1 << 20, error=CheckpointError, what="a quantization record")
    layout = QuantLayout.from_json(text, source=str(settings_file))
    if not weights.is_file():
        raise CheckpointError(
            f"{path} has {SETTINGS_FILE} but no {WEIGHTS_FILE}", hint="the quantized checkpoint is incomplete"
        )
    header = _header_layout(weights)
    recorded = layout.as_dict()
    if header is not None:
        for key in ("method", "group_size", "embeddings", "modules"):
            if header.get(key) != recorded[key]:
                raise CheckpointError(
                    f"{settings_file} says {key} = {_short(recorded[key])}, but {WEIGHTS_FILE} was written "
                    f"with {key} = {_short(header.get(key))}",
                    hint="the two files do not belong together; quantize the original checkpoint again",
                )
    warnings = [] if header is not None else [f"{weights} carries no quantization header"]
    tensors = load_file(str(weights))
    tokenizer = path / TOKENIZER_FILE
    return QuantizedFiles(layout, tensors, tokenizer if tokenizer.is_file() else None, warnings)


def _short(value: object) -> str:
    if isinstance(value, dict):
        methods = sorted(set(value.values()))
        return f"{len(value)} modules ({', '.join(map(str, methods))})"
    return repr(value)
