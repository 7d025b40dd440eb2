"""`olmo finetune merge`: a LoRA adapter folded into its base, written as an ordinary native checkpoint.

The output is what `olmo train` writes minus the optimizer and trainer state (config.yaml of the base,
model.safetensors, and the base's tokenizer.json if it has one), so generate, eval, convert-hf, quantize
and finetune take it like any other checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from olmo_cli.config.schema import LoRAConfig
from olmo_cli.errors import CheckpointError, UsageError

__all__ = ["MergeResult", "merge_adapter"]


@dataclass(frozen=True)
class MergeResult:
    output: Path
    base: Path
    adapter: Path
    modules: int  # Linear layers the adapter changed
    settings: LoRAConfig
    warnings: list[str]


def _adapter_file(path: Path) -> Path:
    from olmo_cli.model.lora import ADAPTER_FILE

    return path / ADAPTER_FILE if path.is_dir() else path


def _refuse_non_base(path: Path) -> None:
    """A quantized checkpoint, or a LoRA run's own (base and adapters still apart), is no base."""
    from olmo_cli.config.yamlio import read_yaml
    from olmo_cli.convert.import_hf import is_hf_dir
    from olmo_cli.model.load import resolve_checkpoint
    from olmo_cli.quant.checkpoint import refuse_quantized

    path = resolve_checkpoint(path)
    refuse_quantized(path, "olmo finetune merge")
    if is_hf_dir(path) or not (path / "config.yaml").is_file():
        return
    config = read_yaml(path / "config.yaml", error=CheckpointError)
    if isinstance(config, dict) and config.get("lora"):
        raise CheckpointError(
            f"{path} is a checkpoint of a LoRA run, not a base model",
            hint="give the base the LoRA run started from, or leave out --checkpoint: the adapter records it",
        )


def merge_adapter(
    adapter_path: Path | str,
    checkpoint: Path | str | None,
    output: Path | str,
    *,
    force: bool = False,
    overwrite: bool = False,
) -> MergeResult:
    """Writes base + adapter at `output`: W + (alpha/rank) B A per adapted Linear, computed in fp32.

    `adapter_path`: the adapter file, or a directory holding one (a LoRA run folder, a checkpoint).
    `checkpoint` None: the base the adapter records. A base whose weights do not match the adapter's
    fingerprint is refused unless `force` (then it is a warning).
    """
    from olmo_cli.checkpoint.unsharded import write_unsharded
    from olmo_cli.config.yamlio import dump_yaml
    from olmo_cli.model.load import TOKENIZER_FILE, read_checkpoint
    from olmo_cli.model.lora import base_fingerprint, merge_into, read_adapter

    adapter_file = _adapter_file(Path(adapter_path))
    adapter = read_adapter(adapter_file)
    source = checkpoint if checkpoint is not None else adapter.base
    if source is None:
        raise UsageError(f"{adapter_file} does not record its base", hint="give --checkpoint BASE")
    if checkpoint is None and adapter.base_fingerprint is None:
        # The recorded base is a path written by whoever made the adapter: it is followed only when the
        # base's weights can be checked against the adapter's fingerprint.
        raise UsageError(
            f"{adapter_file} names its base ({str(source)[:200]}) but carries no fingerprint to check it by",
            hint="give the base explicitly with --checkpoint BASE",
        )
    _refuse_non_base(Path(source))
    base = read_checkpoint(source)
    warnings = list(base.warnings)
    found = base_fingerprint(base.state.items())
    if adapter.base_fingerprint is not None and found != adapter.base_fingerprint:
        text = (
            f"{base.path} is not the base {adapter_file} was trained on (weights fingerprint {found}, the "
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
        raise CheckpointError(f"{adapter_file} does not fit {base.path}: {e}") from None
    text = dump_yaml(base.config.model_dump(mode="json"))
    final = write_unsharded(output, merged, None, None, text, overwrite=overwrite)
    if base.tokenizer_file is not None:
        from olmo_cli.atomic import atomic_write_bytes

        atomic_write_bytes(final / TOKENIZER_FILE, base.tokenizer_file.read_bytes())
    return MergeResult(final, base.path, adapter_file, len(adapter.modules), adapter.settings, warnings)
