"""Any checkpoint a user may point at, read as (config, native weights, tokenizer): the one dispatcher.

The kind comes from `olmo_cli.checkpoint.kind` (the files on disk); each kind's reader is its format
package's: `checkpoint.unsharded` / `checkpoint.sharded` (ours and upstream's), `convert.import_hf`,
`quant.checkpoint`, and a LoRA adapter (`model.lora`'s file) folded into the base it records.
`read_checkpoint_config` gives the config alone, without reading weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from olmo_cli.checkpoint.kind import Located, locate_checkpoint
from olmo_cli.checkpoint.layout import CONFIG_FILE, TOKENIZER_FILE, hint_previous_checkpoint
from olmo_cli.checkpoint.weights import CheckpointConfig, CheckpointWeights
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError, ConfigError

__all__ = ["read_checkpoint", "read_checkpoint_config", "refuse_kinds"]

_TRAINABLE = ("unsharded", "sharded", "hf")


def refuse_kinds(located: Located, action: str, *, allowed: tuple[str, ...] = _TRAINABLE) -> None:
    """A clear CheckpointError when `action` (e.g. "olmo finetune") cannot use this kind of checkpoint:
    a quantized checkpoint or a bare LoRA adapter has no full-precision weights of its own."""
    if located.kind in allowed:
        return
    if located.kind == "quantized":
        raise CheckpointError(
            f"{located.path} is a quantized checkpoint (weight-only int8/int4); {action} needs "
            "full-precision weights",
            hint='give the checkpoint it was quantized from (its path is in quantization.json, "source")',
        )
    if located.kind == "adapter":
        raise CheckpointError(
            f"{located.path} is a LoRA adapter, not a model; {action} needs full weights",
            hint=f"merge it into its base first: olmo finetune merge {located.path} --output DIR",
        )
    raise CheckpointError(f"{located.path} is a {located.kind} checkpoint; {action} cannot use it")


def _config_of(path: Path, data: Any) -> TrainConfig:
    """The validated config.yaml of a native checkpoint (its own file's mistakes are exit 4)."""
    from olmo_cli.config.interpolate import resolve_interpolations
    from olmo_cli.config.loader import validate

    if data is None:
        raise CheckpointError(
            f"{path} has no {CONFIG_FILE}, so the model's shape is unknown",
            hint=f"copy the {CONFIG_FILE} of the run that wrote the checkpoint into the directory",
        )
    file = f"{path}/{CONFIG_FILE}"
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a mapping of config sections")
    try:
        return validate(resolve_interpolations(data, source=file, error=CheckpointError), source=file)
    except ConfigError as e:
        raise CheckpointError(e.message, details=e.details, hint=e.hint) from None


def _yaml_config(path: Path) -> TrainConfig:
    from olmo_cli.config.yamlio import read_yaml

    file = path / CONFIG_FILE
    return _config_of(path, read_yaml(file, error=CheckpointError) if file.is_file() else None)


def _own_tokenizer(path: Path) -> Path | None:
    own = path / TOKENIZER_FILE
    return own if own.is_file() else None


def read_checkpoint_config(path: Path | str) -> CheckpointConfig:
    """The checkpoint `path` names (a run folder: its latest), its kind and config, without its weights.
    A LoRA adapter has no config of its own: an error saying to merge it or give its base."""
    located = locate_checkpoint(path)
    try:
        if located.kind == "hf":
            from olmo_cli.convert.import_hf import read_hf_config

            config, tokenizer = read_hf_config(located.path)
            return CheckpointConfig(located.path, "hf", config, tokenizer)
        if located.kind == "adapter":
            refuse_kinds(located, "reading a config")
        return CheckpointConfig(
            located.path, located.kind, _yaml_config(located.path), _own_tokenizer(located.path)
        )
    except CheckpointError as e:
        hint_previous_checkpoint(e, located.path)
        raise


def read_checkpoint(
    path: Path | str,
    *,
    config: TrainConfig | None = None,
    optim: bool = False,
    trainer: bool = False,
    check_weights: bool = True,
) -> CheckpointWeights:
    """Config and native fp32 weights of any supported checkpoint (see the module doc); for a quantized
    checkpoint the stored quantized tensors and `quantization` set.

    `config`: the config the weights must fit, when the caller has one (a run restoring into its model);
    the checkpoint's own config.yaml is then not needed. `optim` / `trainer`: also read the optimizer and
    trainer state of an unsharded checkpoint (other kinds have none here: a sharded one is restored by
    `checkpoint.sharded.read_sharded` straight into a live, possibly sharded, model). `check_weights`
    False: the caller checks the weights itself (a LoRA run's own checkpoint holds adapters too).
    """
    located = locate_checkpoint(path)
    try:
        match located.kind:
            case "quantized":
                return _read_quantized(located.path)
            case "hf":
                return _read_hf(located.path)
            case "sharded":
                return _read_sharded(located.path, config)
            case "adapter":
                return _read_adapter(located.path)
            case _:
                return _read_unsharded(located.path, config, optim, trainer, check_weights)
    except CheckpointError as e:
        hint_previous_checkpoint(e, located.path)
        raise


def _read_unsharded(
    path: Path, config: TrainConfig | None, optim: bool, trainer: bool, check: bool
) -> CheckpointWeights:
    from olmo_cli.checkpoint.model_state import check_model_state
    from olmo_cli.checkpoint.unsharded import read_unsharded

    found = read_unsharded(path, load_optim=optim, load_trainer=trainer)
    if config is None:
        config = _config_of(path, found.config)
    if check:
        check_model_state(found.model, config.model, source=str(path))
    return CheckpointWeights(
        path,
        "unsharded",
        config,
        _own_tokenizer(path),
        state=found.model,
        warnings=found.warnings,
        optim=found.optim,
        trainer=found.trainer,
    )


def _read_hf(path: Path) -> CheckpointWeights:
    from olmo_cli.convert.import_hf import read_hf

    hf = read_hf(path)
    return CheckpointWeights(path, "hf", hf.config, hf.tokenizer_file, state=hf.model, warnings=hf.warnings)


def _read_sharded(path: Path, config: TrainConfig | None) -> CheckpointWeights:
    """Loads a sharded checkpoint into a plain one-process model and takes its full state dict."""
    from olmo_cli.checkpoint.sharded import read_sharded
    from olmo_cli.model.olmo import build_model
    from olmo_cli.world import close_world, init_world

    config = config or _yaml_config(path)
    model = build_model(config.model, device="meta").to_empty(device="cpu")  # every value is read below
    world = init_world(device="cpu")
    warnings: list[str] = []
    try:
        read_sharded(path, model=model, optim=None, world=world, warnings=warnings)
    finally:
        close_world(world)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return CheckpointWeights(path, "sharded", config, _own_tokenizer(path), state=state, warnings=warnings)


def _read_quantized(path: Path) -> CheckpointWeights:
    from olmo_cli.quant.checkpoint import read_quantized_files
    from olmo_cli.quant.model import check_quantized_tensors

    config = _yaml_config(path)
    found = read_quantized_files(path)
    check_quantized_tensors(found.tensors, found.layout, config.model, source=str(path))
    return CheckpointWeights(
        path,
        "quantized",
        config,
        found.tokenizer_file,
        state=found.tensors,
        warnings=found.warnings,
        quantization=found.layout,
    )


def _read_adapter(path: Path) -> CheckpointWeights:
    """A LoRA adapter folded into the base it records; the base must match the adapter's fingerprint
    (the recorded path was written by whoever made the adapter: it is followed only when checkable)."""
    from olmo_cli.load.adapter import adapter_file, merged_weights, read_adapter_base
    from olmo_cli.model.lora import read_adapter

    file = adapter_file(path)
    return merged_weights(read_adapter_base(file), read_adapter(file), file)
