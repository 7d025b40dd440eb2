"""The run configuration: pydantic models whose field names, defaults and meanings are upstream OLMo's
TrainConfig (allenai/OLMo v0.6.0), so an upstream `config.yaml` validates as it is.

Fields upstream has but olmo does not act on are kept (so nothing is silently dropped) and marked with
`NotActedOn`; `not_acted_on(cfg)` lists the ones a config actually sets to a value we would ignore.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from olmo_cli.config.booleans import bool_for_number


@dataclass(frozen=True)
class NotActedOn:
    """Marks an upstream field whose value olmo reads but does not (yet) act on.

    `accepted` lists values that need no report (they match what olmo does anyway); by default only
    the field's default is accepted.
    """

    why: str
    accepted: tuple[Any, ...] | None = None


def _int_like(value: Any) -> Any:
    """Upstream truncates float-valued counts (`t_max: 3e12`, `t_warmup: 1.0e10`) to int."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        try:
            number = float(text)
        except ValueError:
            return value
        if math.isfinite(number):
            return int(number)
    return value


IntLike = Annotated[int, BeforeValidator(_int_like)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and a boolean
    is never taken for a number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        problem = bool_for_number(value, cls.model_fields[info.field_name].annotation)
        if problem:
            raise ValueError(problem)
        return value


ActivationType = Literal["gelu", "relu", "swiglu"]
LayerNormType = Literal["default", "low_precision", "rms"]
InitFn = Literal["mitchell", "normal", "kaiming_normal", "fan_in", "full_megatron"]


class ModelConfig(Section):
    d_model: int = Field(768, gt=0)
    n_heads: int = Field(12, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    clip_qkv: float | None = Field(None, gt=0)
    n_layers: int = Field(12, gt=0)
    mlp_ratio: int = Field(4, gt=0)
    mlp_hidden_size: int | None = Field(None, gt=0)
    activation_type: ActivationType = "swiglu"
    block_type: Annotated[
        Literal["sequential", "llama"], NotActedOn("olmo builds the fused `sequential` block only")
    ] = "sequential"
    block_group_size: Annotated[
        int, NotActedOn("blocks are never grouped; upstream block_groups keys are remapped on load")
    ] = Field(1, ge=1)
    alibi: Annotated[bool, NotActedOn("ALiBi is not implemented; OLMo uses RoPE")] = False
    alibi_bias_max: float = 8.0
    rope: bool = False
    rope_full_precision: bool = True
    rope_theta: IntLike = Field(10000, gt=0)
    flash_attention: Annotated[
        bool,
        NotActedOn(
            "attention always runs through scaled_dot_product_attention, which picks a flash kernel itself"
        ),
    ] = False
    attention_dropout: float = Field(0.1, ge=0, le=1)
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    residual_dropout: float = Field(0.1, ge=0, le=1)
    embedding_dropout: float = Field(0.1, ge=0, le=1)
    embedding_layer_norm: bool = False
    layer_norm_type: LayerNormType = "default"
    layer_norm_with_affine: bool = True
    layer_norm_eps: float = Field(1e-5, gt=0)
    attention_layer_norm_with_affine: bool = True
    max_sequence_length: int = Field(1024, gt=0)
    include_bias: bool = True
    bias_for_layer_norm: bool | None = None
    scale_logits: bool = False
    vocab_size: int = Field(50257, gt=0)
    embedding_size: int | None = Field(50304, gt=0)
    weight_tying: bool = True
    eos_token_id: int = Field(50256, ge=0)
    pad_token_id: int = Field(50256, ge=0)
    init_device: str | None = None
    init_fn: Annotated[
        InitFn,
        NotActedOn(
            "only the mitchell, normal and full_megatron init schemes are implemented",
            accepted=("mitchell", "normal", "full_megatron"),
        ),
    ] = "normal"
    init_std: float = Field(0.02, gt=0)
    init_cutoff_factor: float | None = Field(None, gt=0)
    precision: Literal["amp_bf16", "amp_fp16", "fp32"] | None = None
    scale_emb_init: bool = False
    emb_init_std: float | None = Field(None, gt=0)
    norm_after: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None and self.multi_query_attention and self.n_kv_heads != 1:
            raise ValueError("n_kv_heads and multi_query_attention disagree: set only one of them")
        if self.n_kv_heads not in (None, self.n_heads) and self.multi_query_attention is False:
            # `multi_query_attention: false` (as the OLMo 1 presets say) beside GQA heads: n_kv_heads
            # decides. Upstream's model refuses the pair, so the config olmo writes leaves it unset.
            object.__setattr__(self, "multi_query_attention", None)
        if self.n_heads % self.effective_n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.effective_n_kv_heads})"
            )
        if self.rope and self.alibi:
            raise ValueError("rope and alibi are mutually exclusive: set one of them to false")
        if self.rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got d_model/n_heads = {self.head_dim}")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError(
                f"embedding_size ({self.embedding_size}) must be at least vocab_size ({self.vocab_size})"
            )
        if self.activation_type == "swiglu" and self.mlp_hidden % 2:
            raise ValueError(f"SwiGLU needs an even fused MLP width, got {self.mlp_hidden}")
        return self

    @property
    def effective_n_kv_heads(self) -> int:
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        """The fused width of `ff_proj` (SwiGLU halves it for `ff_out`)."""
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def mlp_out_width(self) -> int:
        return self.mlp_hidden // 2 if self.activation_type == "swiglu" else self.mlp_hidden

    @property
    def padded_vocab_size(self) -> int:
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    @property
    def bias_for_norm(self) -> bool:
        return self.include_bias if self.bias_for_layer_norm is None else self.bias_for_layer_norm


class OptimizerConfig(Section):
    name: Annotated[Literal["adamw", "lionw"], NotActedOn("only AdamW is implemented", ("adamw",))] = "lionw"
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-5, gt=0)
    no_decay_norm_and_bias: bool | None = None
    selective_updates: Annotated[bool, NotActedOn("selective AdamW updates are not implemented")] = False
    decay_norm_and_bias: bool = False
    decay_embeddings: bool = False
    metrics_log_interval: int | None = None
    record_update_metrics: Annotated[bool, NotActedOn("per-parameter update metrics are not logged")] = False

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") == "decoupled_lionw":
            data = {k: v for k, v in data.items() if k != "eps"} | {"name": "lionw"}
        return data

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimizerConfig:
        for beta in self.betas:
            if not 0 <= beta < 1:
                raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        if self.no_decay_norm_and_bias is not None:
            # Deprecated upstream switch: it overrides both newer flags with its negation, then clears.
            decay = not self.no_decay_norm_and_bias
            object.__setattr__(self, "decay_norm_and_bias", decay)
            object.__setattr__(self, "decay_embeddings", decay)
            object.__setattr__(self, "no_decay_norm_and_bias", None)
        return self


SchedulerName = Literal[
    "cosine_with_warmup",
    "linear_with_warmup",
    "inverse_sqrt_with_warmup",
    "max_scheduler",
    "constant",
    "cosine_linear_envelope",
    "constant_with_warmup",
]


class SchedulerConfig(Section):
    name: SchedulerName = "cosine_with_warmup"
    units: Literal["steps", "tokens"] = "steps"
    t_warmup: IntLike = Field(100, ge=0)
    t_max: IntLike | None = Field(None, gt=0)
    alpha_f: float = Field(0.1, ge=0, le=1)
    grad_clip_warmup_steps: IntLike | None = Field(None, ge=0)
    grad_clip_warmup_factor: float | None = Field(None, gt=0)
    warmup_min_lr: float | None = Field(None, ge=0)


class InstanceFilterConfig(Section):
    repetition_max_period: int = Field(13, gt=0)
    repetition_min_period: int = Field(1, gt=0)
    repetition_max_count: int = Field(32, gt=0)


MemmapDtype = Literal["uint8", "uint16", "uint32", "uint64", "int32", "int64"]


class DataConfig(Section):
    paths: list[str] | None = None
    memmap_dtype: MemmapDtype = "uint16"
    datasets: dict[str, list[str]] | None = None
    label_mask_paths: list[str] | None = None
    pad_direction: Literal["right", "left"] = "right"
    generate_attention_mask: bool = False
    generate_doc_lengths: Annotated[
        bool, NotActedOn("document masking is not implemented: attention spans the whole instance")
    ] = False
    num_workers: int = Field(0, ge=0)
    drop_last: bool = False
    pin_memory: bool = False
    prefetch_factor: int | None = Field(None, gt=0)
    persistent_workers: bool = False
    timeout: int = Field(0, ge=0)
    seed: int | None = None
    instance_filter: InstanceFilterConfig | None = None
    custom_dataset: Annotated[
        dict[str, Any] | None, NotActedOn("custom dataset classes are not supported; use data.paths")
    ] = None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.paths is not None and self.datasets is not None:
            raise ValueError("data.paths and data.datasets are mutually exclusive: use one of them")
        return self


class TokenizerConfig(Section):
    identifier: str = "gpt2"
    truncate_direction: Literal["right", "left"] = "right"


class EvaluatorConfig(Section):
    label: str
    type: Literal["lm", "downstream"] = "lm"
    data: DataConfig = Field(default_factory=DataConfig)
    device_eval_batch_size: int | None = Field(None, gt=0)
    subset_num_batches: int | None = None


class WandbConfig(Section):
    project: str | None = None
    entity: str | None = "ai2-llm"
    group: str | None = None
    name: str | None = None
    tags: list[str] | None = Field(default_factory=lambda: ["watching"])
    log_artifacts: Annotated[bool, NotActedOn("checkpoints are not logged to W&B as artifacts")] = False
    rank_zero_only: bool = True
    log_interval: int = Field(1, gt=0)


class SpeedMonitorConfig(Section):
    window_size: int = Field(100, gt=0)
    gpu_flops_available: float | None = Field(None, gt=0)


class CompilerConfig(Section):
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None
    fullgraph: bool = False
    backend: str = "inductor"
    dynamic: bool | None = None


ShardingStrategy = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"]
WrappingStrategy = Literal[
    "by_block",
    "by_block_and_size",
    "by_block_group",
    "by_block_group_and_size",
    "size_based",
    "one_in_two",
    "one_in_three",
    "one_in_four",
    "one_in_five",
]


class FSDPConfig(Section):
    use_orig_params: bool = True
    sharding_strategy: ShardingStrategy = "FULL_SHARD"
    wrapping_strategy: WrappingStrategy | None = None
    precision: Literal["pure", "mixed"] | None = "pure"
    hybrid_sharding_num_model_replicas: int | None = Field(None, gt=0)


class SingleDeviceConfig(Section):
    """Upstream's `single` section (for `distributed_strategy: single`)."""

    device: Annotated[str, NotActedOn("olmo picks the device itself (olmo train --device)")] = "auto"


class DDPConfig(Section):
    grad_sync_mode: Literal["batch", "micro_batch"] = "batch"
    find_unused_params: bool = False


ActivationCheckpointing = Literal[
    "whole_layer",
    "one_in_two",
    "one_in_three",
    "one_in_four",
    "one_in_eight",
    "two_in_three",
    "three_in_four",
    "fine_grained",
]
_DURATION = re.compile(r"^\s*(?P<num>[0-9][0-9_]*(\.[0-9]*)?([eE][+-]?[0-9]+)?)\s*(?P<unit>T|ep)?\s*$")


def parse_duration(value: int | str) -> tuple[int, Literal["steps", "tokens", "epochs"]]:
    """`max_duration` as (count, unit): an int or numeric string is steps, `2e12T` tokens, `2ep` epochs."""
    if isinstance(value, int):
        return value, "steps"
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"max_duration {value!r} is not steps (10000), tokens (2e12T) or epochs (2ep)")
    count = int(float(match["num"].replace("_", "")))
    unit = {"T": "tokens", "ep": "epochs", None: "steps"}[match["unit"]]
    return count, unit  # type: ignore[return-value]


def _check_duration(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        count, _ = parse_duration(value)
        if count <= 0:
            raise ValueError(f"max_duration must be positive, got {value!r}")
    return value


def _legacy_activation_checkpointing(value: Any) -> Any:
    if value is True:
        return "whole_layer"
    if value is False:
        return None
    return value


LoRATarget = Literal["att_proj", "attn_out", "ff_proj", "ff_out"]


class LoRAConfig(Section):
    """Low-rank adapters (olmo's extension; upstream OLMo has no such section). Each target Linear of
    every block computes `W x + (alpha / rank) * B A dropout(x)`; only A and B train (see model/lora.py).
    Kept in the run's config so `olmo resume` of a LoRA run builds the same adapters."""

    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[LoRATarget] = Field(default_factory=lambda: ["att_proj", "attn_out", "ff_proj", "ff_out"])

    @model_validator(mode="after")
    def _some_targets(self) -> LoRAConfig:
        if not self.targets:
            raise ValueError("lora.targets names no module: give some of att_proj, attn_out, ff_proj, ff_out")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets repeats a module: {self.targets}")
        return self

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


_PROFILING = "profiling hooks are not implemented"


class TrainConfig(Section):
    run_name: str | None = None
    seed: int = 6198
    epoch: int | None = Field(None, ge=0)
    dry_run: bool = False
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    restore_dataloader: bool = True
    fast_forward_batches: int | None = Field(None, ge=0)
    evaluators: list[EvaluatorConfig] = Field(default_factory=list)
    eval_interval: int = Field(1000, gt=0)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    save_folder: str = "./"
    remote_save_folder: str | None = None
    canceled_check_interval: Annotated[
        int, Field(gt=0), NotActedOn("a stop request (signal, time_limit) is checked at every step")
    ] = 50
    save_interval: int | None = Field(1000, gt=0)
    save_interval_unsharded: int | None = Field(None, gt=0)
    save_interval_ephemeral: int | None = Field(None, gt=0)
    save_num_checkpoints_to_keep: int = Field(-1, ge=-1)
    save_num_unsharded_checkpoints_to_keep: int = Field(-1, ge=-1)
    save_overwrite: bool = False
    force_save_unsharded: bool = False
    no_pre_train_checkpoint: bool = False
    load_path: str | None = None
    load_path_sharded_checkpointer: Annotated[
        Literal["torch_legacy", "torch_new", "local", "olmo_core"] | None,
        NotActedOn(
            "sharded checkpoints are read in the torch.distributed.checkpoint layout", (None, "torch_new")
        ),
    ] = None
    try_load_latest_save: bool = False
    reset_optimizer_state: bool = False
    reset_trainer_state: bool = False
    sharded_checkpointer: Annotated[
        Literal["torch_legacy", "torch_new", "local", "olmo_core"],
        NotActedOn("sharded checkpoints are written with torch.distributed.checkpoint", ("torch_new",)),
    ] = "torch_legacy"
    new_style_checkpoints: Annotated[bool | None, NotActedOn("deprecated upstream")] = None
    max_duration: Annotated[int | str, BeforeValidator(_check_duration)] = 10000
    global_train_batch_size: int = Field(512, gt=0)
    device_train_batch_size: int | None = Field(None, gt=0)
    device_train_microbatch_size: int = Field(16, gt=0)
    device_eval_batch_size: int = Field(16, gt=0)
    eval_subset_num_batches: int = -1
    eval_on_load: Annotated[
        bool, NotActedOn("no evaluation right after loading; evaluators run every eval_interval steps")
    ] = False
    device_train_grad_accum: int | None = Field(None, gt=0)
    max_grad_norm: float | None = Field(None, gt=0)
    max_grad_norm_ratio: Annotated[
        float | None, NotActedOn("adaptive per-parameter clipping is not implemented")
    ] = None
    precision: Literal["amp_bf16", "amp_fp16", "fp32"] | None = None
    wandb: WandbConfig | None = None
    speed_monitor: SpeedMonitorConfig = Field(default_factory=SpeedMonitorConfig)
    console_log_interval: int = Field(1, gt=0)
    gen1_gc_interval: int | None = 1
    compile: CompilerConfig | None = None
    distributed_strategy: Annotated[
        Literal["fsdp", "ddp", "single"] | None,
        # "single" (upstream: one device, no wrapper) computes what FSDP2 over one process does
        NotActedOn("olmo shards with FSDP2 at every world size", ("fsdp", None, "single")),
    ] = "fsdp"
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig)
    ddp: Annotated[DDPConfig | None, NotActedOn("olmo shards with FSDP2, not DDP")] = None
    single: SingleDeviceConfig = Field(default_factory=SingleDeviceConfig)
    softmax_auxiliary_loss: bool = False
    auxiliary_loss_multiplier: Annotated[
        float | None,
        NotActedOn(
            "upstream's trainer never reads it and scales the z-loss by 1e-4; olmo does the same, so its "
            "losses match upstream's",
            (1e-4, None),
        ),
    ] = 1e-4
    time_limit: float | None = Field(None, gt=0)
    extra_steps_after_cancel: Annotated[
        int,
        Field(ge=0),
        NotActedOn("a stop request saves a checkpoint and ends at the next step boundary", (0,)),
    ] = 10
    early_stopping_factor: Annotated[float | None, NotActedOn("early stopping is not implemented")] = None
    save_data_indices: Annotated[
        bool,
        NotActedOn(
            "olmo writes no data-indices/ files; `olmo inspect-batch` recomputes any step's batch", (False,)
        ),
    ] = True
    python_profiling: Annotated[bool, NotActedOn(_PROFILING)] = False
    torch_profiling: Annotated[bool, NotActedOn(_PROFILING)] = False
    stop_at: int | None = Field(None, gt=0)
    stop_after: int | None = Field(None, gt=0)
    activation_checkpointing: Annotated[
        ActivationCheckpointing | None, BeforeValidator(_legacy_activation_checkpointing)
    ] = None
    fused_loss: Annotated[bool | None, NotActedOn("flash-attn's fused loss is not used", (None, False))] = (
        None
    )
    hf_datasets_cache_dir: Annotated[str | None, NotActedOn("deprecated upstream")] = None
    module_outputs_save_steps: Annotated[list[int] | None, NotActedOn(_PROFILING)] = None
    # olmo's extension (not upstream's): LoRA finetuning. Left out of dumps while unset, so every other
    # run's config.yaml keeps exactly upstream's keys.
    lora: LoRAConfig | None = None

    @model_serializer(mode="wrap")
    def _without_unset_extensions(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and self.lora is None:
            data.pop("lora", None)
        return data

    @property
    def tokens_per_step(self) -> int:
        return self.global_train_batch_size * self.model.max_sequence_length


@dataclass(frozen=True)
class IgnoredSetting:
    """A value a config sets that olmo reads but does not act on."""

    path: str
    value: Any
    why: str


def not_acted_on(section: BaseModel, prefix: str = "") -> list[IgnoredSetting]:
    """Every field the config explicitly sets to a value olmo would ignore, by dotted path."""
    found: list[IgnoredSetting] = []
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        path = f"{prefix}{name}"
        for meta in info.metadata:
            if isinstance(meta, NotActedOn) and name in section.model_fields_set:
                accepted = meta.accepted if meta.accepted is not None else (info.default,)
                if value not in accepted:
                    shown = value.model_dump() if isinstance(value, BaseModel) else value
                    found.append(IgnoredSetting(path, shown, meta.why))
        if isinstance(value, BaseModel):
            found.extend(not_acted_on(value, path + "."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found.extend(not_acted_on(item, f"{path}.{i}."))
    return found


M = TypeVar("M", bound=BaseModel)


def as_acted_on(section: M) -> M:
    """`section` with each not-acted-on setting still at its upstream default replaced by the first value
    that describes what olmo does instead (e.g. `save_data_indices: false`), where there is one.

    This is what a run writes to its config.yaml: the file then says what the run did, loads in upstream
    as the same run, and reading it back (`olmo resume`) reports nothing olmo wrote itself. A value the
    user set to something else stays as it is (and is reported again when the file is read)."""
    updates: dict[str, Any] = {}
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        marks = [m for m in info.metadata if isinstance(m, NotActedOn) and m.accepted]
        if marks and value == info.default and value not in marks[0].accepted:
            updates[name] = marks[0].accepted[0]
        elif isinstance(value, BaseModel):
            updates[name] = as_acted_on(value)
    return section.model_copy(update=updates) if updates else section
