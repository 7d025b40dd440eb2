"""A LoRA adapter folded into its base: in memory (`read_checkpoint` of an adapter) or written as an
ordinary native checkpoint (`olmo finetune merge`).

The output of `merge_adapter` is what `olmo train` writes minus the optimizer and trainer state
(config.yaml of the base, model.safetensors, and the base's tokenizer.json if it has one), so generate,
eval, convert-hf, quantize and finetune take it like any other checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from olmo_cli.checkpoint.layout import ADAPTER_FILE, TOKENIZER_FILE
from olmo_cli.checkpoint.weights import CheckpointWeights
from olmo_cli.config.schema import LoRAConfig
from olmo_cli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from olmo_cli.model.lora import Adapter

__all__ = ["MergeResult", "adapter_file", "merge_adapter", "merged_weights", "read_adapter_base"]


@dataclass(frozen=True)
class MergeResult:
    output: Path
    base: Path
    adapter: Path
    modules: int  # Linear layers the adapter changed
    settings: LoRAConfig
    warnings: list[str]


def adapter_file(path: Path | str) -> Path:
    """The adapter file `path` names: itself, or the adapter.safetensors in a directory (a LoRA run
    folder, a checkpoint)."""
    path = Path(path)
    return path / ADAPTER_FILE if path.is_dir() else path


def _refuse_non_base(path: Path | str) -> None:
    """A quantized checkpoint, an adapter, or a LoRA run's own checkpoint (base and adapters still
    apart) is no base."""
    from olmo_cli.checkpoint.kind import locate_checkpoint
    from olmo_cli.load.read import read_checkpoint_config, refuse_kinds

    refuse_kinds(locate_checkpoint(path), "olmo finetune merge")
    found = read_checkpoint_config(path)
    if found.config.lora is not None:
        raise CheckpointError(
            f"{found.path} is a checkpoint of a LoRA run, not a base model",
            hint="give the base the LoRA run started from, or leave out --checkpoint: the adapter records it",
        )


def _base_source(adapter: Adapter, file: Path, checkpoint: Path | str | None) -> Path | str:
    source = checkpoint if checkpoint is not None else adapter.base
    if source is None:
        raise UsageError(f"{file} does not record its base", hint="give --checkpoint BASE")
    if checkpoint is None and adapter.base_fingerprint is None:
        # The recorded base is a path written by whoever made the adapter: it is followed only when the
        # base's weights can be checked against the adapter's fingerprint.
        raise UsageError(
            f"{file} names its base ({str(source)[:200]}) but carries no fingerprint to check it by",
            hint="give the base explicitly with --checkpoint BASE",
        )
    return source


def read_adapter_base(adapter_path: Path | str, checkpoint: Path | str | None = None) -> CheckpointWeights:
    """The base to fold the adapter at `adapter_path` into: `checkpoint`, else the one the adapter
    records (followed only when the adapter carries a fingerprint to check it by)."""
    from olmo_cli.load.read import read_checkpoint
    from olmo_cli.model.lora import read_adapter

    file = adapter_file(adapter_path)
    source = _base_source(read_adapter(file), file, checkpoint)
    _refuse_non_base(source)
    return read_checkpoint(source)


def merged_weights(
    base: CheckpointWeights, adapter: Adapter, file: Path, *, force: bool = False
) -> CheckpointWeights:
    """`base` with the adapter folded in (kind "adapter", path the adapter file): W + (alpha/rank) B A
    per adapted Linear, computed in fp32.

    A base whose weights do not match the adapter's fingerprint is refused unless `force` (then it is a
    warning in the result)."""
    from olmo_cli.model.lora import base_fingerprint, merge_into

    warnings = list(base.warnings)
    found = base_fingerprint(base.state.items())
    if adapter.base_fingerprint is not None and found != adapter.base_fingerprint:
        text = (
            f"{base.path} is not the base {file} was trained on (weights fingerprint {found}, the "
            f"adapter's {adapter.base_fingerprint}; trained on {adapter.base or 'an unrecorded base'})"
        )
        if not force:
            raise CheckpointError(
                text, hint="give the base checkpoint the run loaded, or --force to merge anyway"
            )
        warnings.append(text)
    try:
        merged = merge_into(base.state, adapter)
    except ValueError as e:
        raise CheckpointError(f"{file} does not fit {base.path}: {e}") from None
    return replace(base, path=file, kind="adapter", state=merged, warnings=warnings, optim=None, trainer=None)


def merge_adapter(
    adapter_path: Path | str,
    base: CheckpointWeights,
    output: Path | str,
    *,
    force: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Writes `base` + the adapter at `adapter_path` (the file, or a directory holding one) at `output`,
    as a native unsharded checkpoint. `base` is read by the caller (`read_adapter_base`)."""
    from olmo_cli.atomic import atomic_write_bytes
    from olmo_cli.checkpoint.unsharded import write_unsharded
    from olmo_cli.config.yamlio import dump_config
    from olmo_cli.model.lora import read_adapter

    file = adapter_file(adapter_path)
    adapter = read_adapter(file)
    merged = merged_weights(base, adapter, file, force=force)
    text = dump_config(base.config)
    final = write_unsharded(output, merged.state, None, None, text, overwrite=overwrite)
    if base.tokenizer_file is not None:
        atomic_write_bytes(final / TOKENIZER_FILE, base.tokenizer_file.read_bytes())
    return MergeResult(final, base.path, file, len(adapter.modules), adapter.settings, merged.warnings)
