"""Numbers that follow from a config alone: parameter counts, FLOPs per token, memory per rank.

`footprint` gathers them for a run in its precision on a number of ranks; `olmo presets show` and `olmo
train --dry-run` both report it. Pure arithmetic on the config (no torch), so `olmo presets show 65b`
answers instantly; a test checks the counts against a model built on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

from olmo_cli.config.activation_checkpointing import checkpointed_blocks
from olmo_cli.config.precision import precision_of
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


def training_tokens(cfg: TrainConfig) -> int | None:
    """Tokens the schedule trains for, when `max_duration` says it without knowing the data size."""
    count, unit = parse_duration(cfg.max_duration)
    if unit == "steps":
        return count * cfg.tokens_per_step
    if unit == "tokens":
        return count
    return None


@dataclass(frozen=True)
class MemoryPerRank:
    """Bytes one rank holds while training (an estimate: no allocator slack, CUDA context or
    communication buffers, which add a few GiB in practice).

    FSDP shards the fp32 parameters, gradients and AdamW moments across the ranks; the compute copies of
    the units being gathered, the activations and the logits are per rank.
    """

    params: int  # fp32 master weights (this rank's shard)
    grads: int  # fp32 gradients (shard)
    optimizer: int  # AdamW exp_avg + exp_avg_sq in fp32 (shard)
    gathered_params: int  # compute-dtype copies of the units in use (all of them with one rank)
    activations: int  # saved for backward, one micro-batch
    logits: int  # compute-dtype logits plus the fp32 log-softmax, one micro-batch

    @property
    def sharded_states(self) -> int:
        """Master weights, gradients and AdamW moments: the part that shrinks with more ranks."""
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.sharded_states + self.gathered_params + self.activations + self.logits


def _activation_elements_per_token_per_layer(cfg: ModelConfig) -> int:
    """Compute-dtype tensors a block keeps for backward, per token, with a fused (flash) attention
    kernel: both norm inputs and outputs, fused qkv, rotated q/k and v, attention output, the fused MLP
    projection, the activation and its product."""
    d, kv_width = cfg.d_model, cfg.effective_n_kv_heads * cfg.head_dim
    qkv = d + 2 * kv_width
    return 4 * d + 2 * qkv + d + cfg.mlp_hidden + 2 * cfg.mlp_out_width


def memory_per_rank(cfg: TrainConfig, world_size: int) -> MemoryPerRank:
    """The memory of one of `world_size` ranks training `cfg` with AdamW, in the run's precision."""
    if world_size < 1:
        raise ValueError("world_size must be at least 1")
    model = cfg.model
    precision = precision_of(cfg)
    width = precision.bytes  # of the compute dtype
    n = num_params(model)
    if world_size > 1:
        # The largest units FSDP gathers are blocks and the root (embedding + output projection): the
        # current one and the prefetched next.
        unit = max(block_params(model), embedding_params(model) + output_params(model))
        gathered = 2 * width * unit
    else:
        # One rank: autocast keeps a low-precision copy of every weight; fp32 computes on the weights.
        gathered = width * n if precision.autocast else 0
    tokens = cfg.device_train_microbatch_size * model.max_sequence_length
    per_layer = width * _activation_elements_per_token_per_layer(model) * tokens
    kept = len(checkpointed_blocks(cfg.activation_checkpointing, model.n_layers))
    # A checkpointed block keeps only its input; one block at a time is recomputed in the backward pass.
    activations = (model.n_layers - kept) * per_layer + kept * width * model.d_model * tokens
    if kept:
        activations += per_layer
    return MemoryPerRank(
        params=4 * n // world_size,
        grads=4 * n // world_size,
        optimizer=8 * n // world_size,
        gathered_params=gathered,
        activations=activations,
        logits=tokens * model.padded_vocab_size * (width + 4),
    )


@dataclass(frozen=True)
class Footprint:
    """What training `cfg` on `world_size` ranks costs, from the config alone: the one account both
    `olmo presets show` and `olmo train --dry-run` report."""

    world_size: int
    precision: str
    params: int
    non_embedding_params: int
    forward_flops_per_token: int
    backward_flops_per_token: int
    memory: MemoryPerRank

    @property
    def training_flops_per_token(self) -> int:
        return self.forward_flops_per_token + self.backward_flops_per_token


def footprint(cfg: TrainConfig, world_size: int) -> Footprint:
    forward, backward = flops_per_token(cfg.model)
    return Footprint(
        world_size=world_size,
        precision=precision_of(cfg).name,
        params=num_params(cfg.model),
        non_embedding_params=num_params(cfg.model, include_embedding=False),
        forward_flops_per_token=forward,
        backward_flops_per_token=backward,
        memory=memory_per_rank(cfg, world_size),
    )


@dataclass(frozen=True)
class Summary(Footprint):
    """What `olmo presets list/show` report about a config: its footprint, shape and training budget."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    context_length: int
    tokens_per_step: int
    training_tokens: int | None  # a count: an int in JSON whether it came from the schedule or a preset

    @property
    def training_flops(self) -> int | None:
        if self.training_tokens is None:
            return None
        return int(self.training_flops_per_token) * self.training_tokens

    def as_dict(self) -> dict[str, object]:
        m = self.memory
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
            "precision": self.precision,
            "memory_per_gpu": {
                "gpus": self.world_size,
                "sharded_states_bytes": m.sharded_states,
                "gathered_params_bytes": m.gathered_params,
                "activations_bytes": m.activations,
                "logits_bytes": m.logits,
                "total_bytes": m.total,
            },
        }


def summarize(cfg: TrainConfig, *, gpus: int = 1, published_tokens: float | None = None) -> Summary:
    """`published_tokens` (a preset's own figure) is used when the schedule is in epochs."""
    model = cfg.model
    tokens = training_tokens(cfg)
    return Summary(
        **vars(footprint(cfg, gpus)),
        n_layers=model.n_layers,
        d_model=model.d_model,
        n_heads=model.n_heads,
        n_kv_heads=model.effective_n_kv_heads,
        context_length=model.max_sequence_length,
        tokens_per_step=cfg.tokens_per_step,
        training_tokens=tokens if tokens is not None else _count(published_tokens),
    )


def _count(value: float | None) -> int | None:
    return None if value is None else int(round(value))
