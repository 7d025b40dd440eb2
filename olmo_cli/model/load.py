"""Any checkpoint a user may point at, read as (config, native weights, tokenizer) and built into a model.

Accepted: an unsharded checkpoint (ours or upstream's `stepN-unsharded/`), our sharded checkpoint
(`stepN/` with `model_and_optim/`, unsharded on the way), a Hugging Face Olmo directory, a quantized
checkpoint written by `olmo quantize` (int8/int4 weights; `load_model` returns a model computing with
them), or a run folder (its latest checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from olmo_cli.checkpoint.layout import hint_previous_checkpoint
from olmo_cli.config.schema import TrainConfig
from olmo_cli.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from olmo_cli.data.tokenizer import ResolvedTokenizer
    from olmo_cli.model.olmo import OLMo
    from olmo_cli.quant.settings import QuantLayout

__all__ = [
    "CheckpointWeights",
    "load_model",
    "load_tokenizer",
    "read_checkpoint",
    "require_full_precision",
    "resolve_checkpoint",
]

CheckpointKind = Literal["unsharded", "sharded", "hf", "quantized"]
SHARDED_MODEL_DIR = "model_and_optim"
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class CheckpointWeights:
    path: Path
    kind: CheckpointKind
    config: TrainConfig
    state: dict[str, torch.Tensor]
    """Native parameter names, fp32, on the CPU. For a quantized checkpoint: the stored tensors (packed
    `M.qweight`/`M.scales`/`M.zeros` per quantized module M, see `olmo_cli.quant.model`)."""
    tokenizer_file: Path | None = None
    """A tokenizer.json stored with the checkpoint; it wins over config.tokenizer.identifier."""
    warnings: list[str] = field(default_factory=list)
    quantization: QuantLayout | None = None
    """Set for a quantized checkpoint (kind "quantized"): method, group size, quantized modules."""


def resolve_checkpoint(path: Path | str) -> Path:
    """The checkpoint directory `path` names: itself, or a run folder's latest checkpoint."""
    from olmo_cli.checkpoint.layout import find_latest_checkpoint, resolve_state_file
    from olmo_cli.convert.import_hf import is_hf_dir
    from olmo_cli.quant.checkpoint import is_quantized

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist", hint="check the path")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    if (
        is_hf_dir(path)
        or is_quantized(path)
        or resolve_state_file(path, "model")
        or (path / SHARDED_MODEL_DIR).is_dir()
    ):
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(
            f"{path} is not a checkpoint: no model.safetensors, model.pt, {SHARDED_MODEL_DIR}/ or "
            "config.json, and no stepN/ checkpoint inside",
            hint="give a checkpoint directory (run/step1000-unsharded), a run folder, or a Hugging Face "
            "model directory",
        )
    return latest


def _train_config(data: dict | None, source: str) -> TrainConfig:
    from olmo_cli.config.interpolate import resolve_interpolations
    from olmo_cli.config.loader import validate

    if data is None:
        raise CheckpointError(
            f"{source} has no config.yaml, so the model's shape is unknown",
            hint="copy the config.yaml of the run that wrote the checkpoint into the directory",
        )
    try:
        file = f"{source}/config.yaml"
        return validate(resolve_interpolations(data, source=file, error=CheckpointError), source=file)
    except ConfigError as e:
        raise CheckpointError(e.message, details=e.details, hint=e.hint) from None


def _read_unsharded(path: Path) -> CheckpointWeights:
    from olmo_cli.checkpoint.unsharded import read_unsharded

    found = read_unsharded(path, load_optim=False, load_trainer=False)
    config = _train_config(found.config, str(path))
    from olmo_cli.checkpoint.model_state import check_model_state

    check_model_state(found.model, config.model, source=str(path))
    own = path / TOKENIZER_FILE
    return CheckpointWeights(
        path, "unsharded", config, found.model, own if own.is_file() else None, found.warnings
    )


def _read_sharded(path: Path) -> CheckpointWeights:
    """Loads a sharded checkpoint into a plain one-process model and takes its full state dict."""
    from olmo_cli.checkpoint.sharded import read_sharded
    from olmo_cli.config.yamlio import read_yaml
    from olmo_cli.model.olmo import build_model
    from olmo_cli.train.distributed import close_world, init_world

    config_file = path / "config.yaml"
    config = _train_config(
        read_yaml(config_file, error=CheckpointError) if config_file.is_file() else None, str(path)
    )
    model = build_model(config.model, device="meta").to_empty(device="cpu")  # every value is read below
    world = init_world(device="cpu")
    warnings: list[str] = []
    try:
        read_sharded(path, model=model, optim=None, world=world, warnings=warnings)
    finally:
        close_world(world)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return CheckpointWeights(path, "sharded", config, state, warnings=warnings)


def _read_quantized(path: Path) -> CheckpointWeights:
    from olmo_cli.config.yamlio import read_yaml
    from olmo_cli.quant.checkpoint import read_quantized_files
    from olmo_cli.quant.model import check_quantized_tensors

    config_file = path / "config.yaml"
    config = _train_config(
        read_yaml(config_file, error=CheckpointError) if config_file.is_file() else None, str(path)
    )
    found = read_quantized_files(path)
    check_quantized_tensors(found.tensors, found.layout, config.model, source=str(path))
    return CheckpointWeights(
        path, "quantized", config, found.tensors, found.tokenizer_file, found.warnings, found.layout
    )


def read_checkpoint(path: Path | str) -> CheckpointWeights:
    """Config and native fp32 weights of any supported checkpoint (see the module doc); for a quantized
    checkpoint the stored quantized tensors and `quantization` set."""
    from olmo_cli.convert.import_hf import is_hf_dir, read_hf
    from olmo_cli.quant.checkpoint import is_quantized

    path = resolve_checkpoint(path)
    try:
        if is_quantized(path):
            return _read_quantized(path)
        if is_hf_dir(path):
            hf = read_hf(path)
            return CheckpointWeights(path, "hf", hf.config, hf.model, hf.tokenizer_file, hf.warnings)
        if (path / SHARDED_MODEL_DIR).is_dir():
            return _read_sharded(path)
        return _read_unsharded(path)
    except CheckpointError as e:
        hint_previous_checkpoint(e, path)
        raise


def load_tokenizer(checkpoint: CheckpointWeights) -> ResolvedTokenizer:
    """The checkpoint's tokenizer with the model config's EOS and pad ids."""
    from olmo_cli.data.tokenizer import resolve_tokenizer

    cfg = checkpoint.config.model
    if checkpoint.kind == "hf" and checkpoint.tokenizer_file is None:
        raise CheckpointError(
            f"{checkpoint.path} has no tokenizer.json",
            hint="copy the model's tokenizer.json into the directory (fast tokenizers save one)",
        )
    source = checkpoint.tokenizer_file or checkpoint.config.tokenizer.identifier
    tokenizer = resolve_tokenizer(str(source), eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
    if tokenizer.identity.vocab_size > cfg.padded_vocab_size:
        raise CheckpointError(
            f"tokenizer {source} has {tokenizer.identity.vocab_size} tokens, more than the model's "
            f"{cfg.padded_vocab_size} embeddings",
            hint="the config's tokenizer.identifier does not name the tokenizer this model was trained with",
        )
    return tokenizer


def load_model(
    checkpoint: CheckpointWeights, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> OLMo:
    """An eval-mode OLMo holding the checkpoint's weights, on `device` in `dtype`.

    For a quantized checkpoint the Linear modules (and the embedding, if quantized) are
    `olmo_cli.quant.modules` QuantLinear/QuantEmbedding computing with the int8/int4 weights; `dtype` is
    then the dtype of activations and of the tensors kept in full precision.
    """
    from olmo_cli.model.olmo import build_model

    if checkpoint.quantization is not None:
        from olmo_cli.quant.model import build_quantized_model

        return build_quantized_model(
            checkpoint.config.model,
            checkpoint.state,
            checkpoint.quantization,
            device=device,
            dtype=dtype,
            source=str(checkpoint.path),
        )
    model = build_model(checkpoint.config.model, device="meta")
    model.load_state_dict(checkpoint.state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def require_full_precision(checkpoint: CheckpointWeights, action: str) -> None:
    """Raises CheckpointError when `checkpoint` is quantized; `action` names what needs full precision
    (e.g. "olmo finetune")."""
    if checkpoint.quantization is not None:
        from olmo_cli.quant.checkpoint import refuse_quantized

        refuse_quantized(checkpoint.path, action)
