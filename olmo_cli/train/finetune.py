"""`olmo finetune`: the config of a finetune run, built from a base checkpoint; training is `run()`'s.

A finetune is an ordinary run whose config says where its weights come from (upstream's way):
`load_path: BASE`, `reset_trainer_state: true`, `reset_optimizer_state: true`. So it loads the weights
only, starts at step 0 with a fresh optimizer and schedule, and then is a run like any other: FSDP,
checkpoints, metrics, wandb, and `olmo resume`, which continues from the run's own checkpoints (see
train/restore.py: the resets apply only to a checkpoint that is not the run's own).

The config is the one loader's chain (`olmo_cli.config.loader`), in increasing precedence:
  1. the base: the checkpoint's own config (its config.yaml, or a Hugging Face config.json), or the
     --preset / --config given, whose model must then describe the checkpoint's architecture;
  2. FINETUNE_DEFAULTS and a global batch of at most FINETUNE_MAX_GLOBAL_BATCH (a --config file's own
     values win over them; a preset's do not, presets being pretraining recipes);
  3. --lora-* settings (typed options), then --set overrides;
  4. what makes it a finetune of BASE (load_path and the two resets) and --save-folder (forced).
Then, unless set explicitly, the warmup is WARMUP_FRACTION of the steps and `stop_at` is the last step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from olmo_cli.checkpoint.weights import CheckpointConfig
from olmo_cli.config.schema import ModelConfig, TrainConfig
from olmo_cli.errors import CheckpointError, ConfigError, UsageError

__all__ = [
    "ARCHITECTURE",
    "FINETUNE_DEFAULTS",
    "FINETUNE_MAX_GLOBAL_BATCH",
    "WARMUP_FRACTION",
    "FinetuneRequest",
    "architecture_differences",
    "build_finetune_config",
    "read_base",
]

# Tulu-style supervised finetuning (upstream's finetune recipe and open-instruct's defaults).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "optimizer.name": "adamw",
    "optimizer.learning_rate": 2e-5,
    "optimizer.weight_decay": 0.0,
    "scheduler.name": "linear_with_warmup",
    "scheduler.units": "steps",
    "scheduler.alpha_f": 0.0,
    "scheduler.t_max": None,
    "scheduler.grad_clip_warmup_steps": None,
    "scheduler.grad_clip_warmup_factor": None,
    "max_duration": "2ep",
    "max_grad_norm": 1.0,
    "stop_at": None,
    "stop_after": None,
    "epoch": None,
    "evaluators": [],  # the base's evaluators read its pretraining data
    "wandb": None,  # the base's wandb section names its own project (upstream's: ai2-llm)
}
WARMUP_FRACTION = 0.03
# Tulu's effective batch. A base's pretraining batch (2048 sequences for the official 1B/7B) would leave
# a finetune set of a few thousand conversations less than a step; a smaller base batch is kept.
FINETUNE_MAX_GLOBAL_BATCH = 128
LORA_LEARNING_RATE = 1e-4  # adapters start at zero and are few: they want a larger step

# The fields that decide the parameters' shapes or the forward computation, read through the properties
# that resolve equivalent spellings (mlp_ratio vs mlp_hidden_size, n_kv_heads vs multi_query_attention).
ARCHITECTURE: dict[str, Callable[[ModelConfig], Any]] = {
    "d_model": lambda m: m.d_model,
    "n_layers": lambda m: m.n_layers,
    "n_heads": lambda m: m.n_heads,
    "n_kv_heads": lambda m: m.effective_n_kv_heads,
    "mlp_hidden_size": lambda m: m.mlp_hidden,
    "activation_type": lambda m: m.activation_type,
    "block_type": lambda m: m.block_type,
    "rope": lambda m: m.rope,
    "rope_theta": lambda m: m.rope_theta if m.rope else None,
    "alibi": lambda m: m.alibi,
    "clip_qkv": lambda m: m.clip_qkv,
    "include_bias": lambda m: m.include_bias,
    "bias_for_layer_norm": lambda m: m.bias_for_norm if m.layer_norm_with_affine else None,
    "layer_norm_type": lambda m: m.layer_norm_type,
    "layer_norm_with_affine": lambda m: m.layer_norm_with_affine,
    "layer_norm_eps": lambda m: m.layer_norm_eps,
    "attention_layer_norm": lambda m: m.attention_layer_norm,
    "embedding_layer_norm": lambda m: m.embedding_layer_norm,
    "norm_after": lambda m: m.norm_after,
    "scale_logits": lambda m: m.scale_logits,
    "weight_tying": lambda m: m.weight_tying,
    "embedding_size": lambda m: m.padded_vocab_size,
    # Learned positions have one row per position; RoPE models may finetune on shorter sequences.
    "max_sequence_length": lambda m: None if m.rope else m.max_sequence_length,
}


@dataclass(frozen=True)
class FinetuneRequest:
    """What the user asked for, as the command line gives it."""

    checkpoint: Path
    data: Sequence[str] = ()
    preset: str | None = None
    config_file: Path | None = None
    overrides: Sequence[str] = ()
    save_folder: Path | None = None
    lora: dict[str, Any] | None = None  # LoRAConfig fields given on the command line
    world_size: int = 1


# ---- the base checkpoint ----------------------------------------------------------------------------


def read_base(checkpoint: Path | str) -> CheckpointConfig:
    """The checkpoint a finetune starts from (its path made absolute), and its config, without reading
    its weights: the weights are read once, by the run that loads them."""
    from olmo_cli.checkpoint.kind import locate_checkpoint
    from olmo_cli.load.read import read_checkpoint_config, refuse_kinds

    refuse_kinds(locate_checkpoint(checkpoint), "olmo finetune")
    found = read_checkpoint_config(checkpoint)
    path = found.path.resolve()
    if found.config.lora is not None:
        raise CheckpointError(
            f"{path} is a checkpoint of a LoRA run: its base weights and adapters are still apart",
            hint=f"merge them first (the adapter records its base): olmo finetune merge {path.parent} "
            "--output DIR; then finetune DIR",
        )
    return replace(found, path=path)


def architecture_differences(checkpoint: ModelConfig, other: ModelConfig) -> list[str]:
    """`field: checkpoint X, config Y` for every architecture field on which the two disagree."""
    found = []
    for name, read in ARCHITECTURE.items():
        mine, theirs = read(checkpoint), read(other)
        if mine != theirs:
            found.append(f"model.{name}: checkpoint {mine!r}, config {theirs!r}")
    return found


# ---- the config -------------------------------------------------------------------------------------


def _wants_lora(request: FinetuneRequest) -> bool:
    return request.lora is not None or any(
        o.strip().lstrip("-").replace("-", "_").startswith("lora") for o in request.overrides
    )


def _defaults(
    request: FinetuneRequest, base: CheckpointConfig
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Finetune's defaults over the starting point (the base's or the preset's config), as a function of
    it: the global batch is the starting point's, capped at FINETUNE_MAX_GLOBAL_BATCH."""
    name = base.config.run_name or base.path.name
    suffix = "lora" if _wants_lora(request) else "finetune"
    defaults = {**FINETUNE_DEFAULTS, "run_name": f"{name}-{suffix}", "save_folder": f"runs/{name}-{suffix}"}
    if _wants_lora(request):
        defaults["optimizer.learning_rate"] = LORA_LEARNING_RATE

    def over(below: Mapping[str, Any]) -> dict[str, Any]:
        batch = (
            below.get("global_train_batch_size")
            or TrainConfig.model_fields["global_train_batch_size"].default
        )
        return {**defaults, "global_train_batch_size": min(batch, FINETUNE_MAX_GLOBAL_BATCH)}

    return over


def _configured(request: FinetuneRequest, base: CheckpointConfig) -> tuple[TrainConfig, frozenset[str]]:
    """The validated config before the data is known, and the keys the user set explicitly: the
    finetune's settings as layers of the one loader (see the module doc)."""
    from olmo_cli.config.loader import load_config

    forced: dict[str, Any] = {
        "load_path": str(base.path),
        "reset_trainer_state": True,
        "reset_optimizer_state": True,
        "try_load_latest_save": False,
    }
    if request.save_folder is not None:
        forced["save_folder"] = str(request.save_folder)
    loaded = load_config(
        preset=request.preset,
        config_file=request.config_file,
        overrides=list(request.overrides),
        base=base.config.model_dump(mode="json"),
        base_source=f"the config of {base.path}",
        defaults=_defaults(request, base),
        options={f"lora.{key}": value for key, value in (request.lora or {}).items()},
        forced=forced,
        origins={"save_folder": "--save-folder", **{f"lora.{k}": f"--lora-{k}" for k in request.lora or {}}},
    )
    return loaded.config, loaded.explicit


def _check_architecture(base: CheckpointConfig, cfg: TrainConfig, request: FinetuneRequest) -> None:
    details = architecture_differences(base.config.model, cfg.model)
    if not details:
        return
    given = f"--preset {request.preset}" if request.preset else f"--config {request.config_file}"
    given = given if (request.preset or request.config_file) else "the --set overrides"
    raise ConfigError(
        f"{given} describes another architecture than the checkpoint {base.path}",
        details=details,
        hint="the model comes from the checkpoint: leave out --preset/--config (training settings can be "
        "given with --set), or give one whose model section matches",
    )


def _check_save_folder(base: CheckpointConfig, cfg: TrainConfig) -> None:
    folder = Path(cfg.save_folder).expanduser().resolve()
    if folder == base.path.parent or folder == base.path:
        raise ConfigError(
            f"save_folder {cfg.save_folder} is the base checkpoint's own run folder",
            hint="a finetune writes a new run: give --save-folder DIR elsewhere",
        )


def _with_data(cfg: TrainConfig, request: FinetuneRequest) -> TrainConfig:
    from olmo_cli.train.prepare import resolve_data

    if request.data:
        cfg, _ = resolve_data(cfg, request.data, lambda event: None)
        return cfg
    if request.config_file is not None and (cfg.data.paths or cfg.data.datasets):
        return cfg  # the user's own config names the finetuning data
    raise UsageError(
        "olmo finetune needs data: --data DIR (e.g. from `olmo data tokenize --chat`)",
        hint="olmo data tokenize chats.jsonl --chat -t TOKENIZER -o data/sft; then --data data/sft",
    )


def _steps(cfg: TrainConfig, world_size: int) -> int:
    from olmo_cli.data.dataset import build_dataset
    from olmo_cli.data.order import total_size
    from olmo_cli.train import duration

    dataset = build_dataset(cfg.data, cfg.model.max_sequence_length)
    per_epoch = total_size(len(dataset), world_size, cfg.data.drop_last) // cfg.global_train_batch_size
    return duration.max_steps(cfg, 0, 0, per_epoch)


def build_finetune_config(request: FinetuneRequest) -> tuple[TrainConfig, CheckpointConfig]:
    """The finetune run's config (see the module doc) and the base checkpoint it starts from."""
    base = read_base(request.checkpoint)
    cfg, explicit = _configured(request, base)
    _check_architecture(base, cfg, request)
    _check_save_folder(base, cfg)
    cfg = _with_data(cfg, request)
    updates: dict[str, Any] = {}
    steps = _steps(cfg, request.world_size)
    if "scheduler.t_warmup" not in explicit and "scheduler" not in explicit:
        updates["scheduler"] = cfg.scheduler.model_copy(update={"t_warmup": round(WARMUP_FRACTION * steps)})
    if not explicit & {"stop_at", "stop_after"} and steps > 0:
        updates["stop_at"] = steps  # upstream would train 10 more steps, here at a learning rate of 0
    if updates:
        cfg = TrainConfig.model_validate({**cfg.model_dump(), **updates})
    return cfg, base
