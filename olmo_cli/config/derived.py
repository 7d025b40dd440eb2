"""Numbers that follow from a config alone: parameter counts, FLOPs per token, memory per GPU.

Pure arithmetic on the config (no torch), so `olmo presets show 65b` answers instantly; a test checks
the counts against a model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

from olmo_cli.config.schema import ModelConfig, TrainConfig, parse_duration

GIB = 1024**3


def _linear(cfg: ModelConfig, n_in: int, n_out: int) -> int:
    return n_in * n_out + (n_out if cfg.include_bias else 0)


def _norm(cfg: ModelConfig, width: int, affine: bool) -> int:
    if not affine:
        return 0
    return width * (2 if cfg.bias_for_norm else 1)


def block_params(cfg: ModelConfig) -> int:
    """Parameters of one transformer block."""
    d, kv_width = cfg.d_model, cfg.effective_n_kv_heads * cfg.head_dim
    total = _linear(cfg, d, d + 2 * kv_width)  # att_proj (fused q|k|v)
    total += _linear(cfg, d, d)  # attn_out
    total += _linear(cfg, d, cfg.mlp_hidden)  # ff_proj (fused up|gate for SwiGLU)
    total += _linear(cfg, cfg.mlp_out_width, d)  # ff_out
    total += 2 * _norm(cfg, d, cfg.layer_norm_with_affine)  # attn_norm, ff_norm
    if cfg.attention_layer_norm:
        affine = cfg.attention_layer_norm_with_affine
        total += _norm(cfg, d, affine) + _norm(cfg, kv_width, affine)  # q_norm, k_norm
    return total


def embedding_params(cfg: ModelConfig) -> int:
    return cfg.padded_vocab_size * cfg.d_model


def output_params(cfg: ModelConfig) -> int:
    """The untied output projection (`transformer.ff_out`); zero when tied to the embedding."""
    if cfg.weight_tying:
        return 0
    return _linear(cfg, cfg.d_model, cfg.padded_vocab_size)


def num_params(cfg: ModelConfig, *, include_embedding: bool = True) -> int:
    """As upstream counts: the non-embedding count drops `wte` only (an untied `ff_out` stays in)."""
    total = cfg.n_layers * block_params(cfg) + output_params(cfg)
    total += _norm(cfg, cfg.d_model, cfg.layer_norm_with_affine)  # ln_f
    if cfg.embedding_layer_norm:
        total += _norm(cfg, cfg.d_model, cfg.layer_norm_with_affine)
    if include_embedding:
        total += embedding_params(cfg)
    return total


def flops_per_token(cfg: ModelConfig) -> tuple[int, int]:
    """(forward, backward) FLOPs per token with upstream's accounting, which MFU figures follow."""
    attention = cfg.n_layers * cfg.d_model * cfg.max_sequence_length
    forward = 2 * num_params(cfg, include_embedding=False) + 4 * attention
    backward = 4 * num_params(cfg) + 8 * attention
    return forward, backward


def training_flops_per_token(cfg: ModelConfig) -> int:
    return sum(flops_per_token(cfg))


def training_tokens(cfg: TrainConfig) -> int | None:
    """Tokens the schedule trains for, when `max_duration` says it without knowing the data size."""
    count, unit = parse_duration(cfg.max_duration)
    if unit == "steps":
        return count * cfg.tokens_per_step
    if unit == "tokens":
        return count
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU for one training micro-step under FSDP with bf16 mixed precision and AdamW."""

    gpus: int
    sharded_states: int  # fp32 master weights + fp32 grads + AdamW moments, split over the GPUs
    gathered_params: int  # bf16 full copies of the units being computed (current + prefetched)
    activations: int  # saved for backward, for one micro-batch
    logits: int  # bf16 logits + fp32 log-softmax of one micro-batch

    @property
    def total(self) -> int:
        return self.sharded_states + self.gathered_params + self.activations + self.logits


def _activation_bytes_per_token_per_layer(cfg: ModelConfig) -> int:
    """bf16 tensors a block keeps for backward, per token, with a fused (flash) attention kernel:
    both norm inputs and outputs, fused qkv, rotated q/k and v, attention output, the fused MLP
    projection, the activation and its product."""
    d, kv_width = cfg.d_model, cfg.effective_n_kv_heads * cfg.head_dim
    qkv = d + 2 * kv_width
    elements = 4 * d + 2 * qkv + d + cfg.mlp_hidden + 2 * cfg.mlp_out_width
    return 2 * elements


def _checkpointed_layers(cfg: TrainConfig) -> int:
    n = cfg.model.n_layers
    every = {"whole_layer": 1, "one_in_two": 2, "one_in_three": 3, "one_in_four": 4, "one_in_eight": 8}
    mode = cfg.activation_checkpointing
    if mode is None or mode == "fine_grained":
        return 0
    if mode in every:
        return len(range(0, n, every[mode]))
    return n - len(range(0, n, 3 if mode == "two_in_three" else 4))


def memory_per_gpu(cfg: TrainConfig, gpus: int) -> MemoryEstimate:
    """An estimate, not a promise: it leaves out the CUDA context, allocator fragmentation and
    communication buffers, which add a few GiB in practice."""
    if gpus < 1:
        raise ValueError("gpus must be at least 1")
    model = cfg.model
    params = num_params(model)
    sharded = 16 * params // gpus  # 4 master + 4 grad + 8 AdamW bytes per parameter
    # The largest units FSDP gathers are blocks and the root (embedding + output projection).
    unit = max(block_params(model), embedding_params(model) + output_params(model))
    gathered = 2 * 2 * unit if gpus > 1 else 2 * params  # bf16: current + prefetched unit
    tokens = cfg.device_train_microbatch_size * model.max_sequence_length
    per_layer = _activation_bytes_per_token_per_layer(model) * tokens
    kept = _checkpointed_layers(cfg)
    activations = (model.n_layers - kept) * per_layer + kept * 2 * model.d_model * tokens
    if kept:
        activations += per_layer  # one block is recomputed at a time
    logits = tokens * model.padded_vocab_size * (2 + 4)
    return MemoryEstimate(gpus, sharded, gathered, activations, logits)


@dataclass(frozen=True)
class Summary:
    """What `olmo presets list/show` report about a config."""

    params: int
    non_embedding_params: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    context_length: int
    tokens_per_step: int
    training_tokens: float | None
    forward_flops_per_token: int
    backward_flops_per_token: int
    memory: MemoryEstimate

    @property
    def training_flops_per_token(self) -> int:
        return self.forward_flops_per_token + self.backward_flops_per_token

    @property
    def training_flops(self) -> float | None:
        if self.training_tokens is None:
            return None
        return self.training_flops_per_token * self.training_tokens

    def as_dict(self) -> dict[str, object]:
        return {
            "params": self.params,
            "non_embedding_params": self.non_embedding_params,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "context_length": self.context_length,
            "tokens_per_step": self.tokens_per_step,
            "training_tokens": self.training_tokens,
            "forward_flops_per_token": self.forward_flops_per_token,
            "backward_flops_per_token": self.backward_flops_per_token,
            "training_flops_per_token": self.training_flops_per_token,
            "training_flops": self.training_flops,
            "memory_per_gpu": {
                "gpus": self.memory.gpus,
                "sharded_states_bytes": self.memory.sharded_states,
                "gathered_params_bytes": self.memory.gathered_params,
                "activations_bytes": self.memory.activations,
                "logits_bytes": self.memory.logits,
                "total_bytes": self.memory.total,
            },
        }


def summarize(cfg: TrainConfig, *, gpus: int = 1, published_tokens: float | None = None) -> Summary:
    """`published_tokens` (a preset's own figure) is used when the schedule is in epochs."""
    model = cfg.model
    forward, backward = flops_per_token(model)
    tokens = training_tokens(cfg)
    return Summary(
        params=num_params(model),
        non_embedding_params=num_params(model, include_embedding=False),
        n_layers=model.n_layers,
        d_model=model.d_model,
        n_heads=model.n_heads,
        n_kv_heads=model.effective_n_kv_heads,
        context_length=model.max_sequence_length,
        tokens_per_step=cfg.tokens_per_step,
        training_tokens=tokens if tokens is not None else published_tokens,
        forward_flops_per_token=forward,
        backward_flops_per_token=backward,
        memory=memory_per_gpu(cfg, gpus),
    )
