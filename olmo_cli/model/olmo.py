"""The OLMo-1 family transformer in one file: small modules first, then the model.

Module and parameter names are upstream OLMo's (allenai/OLMo, `block_type: sequential`), so
`OLMo(cfg).state_dict()` has exactly the keys of an upstream unsharded checkpoint and loads it as it is.
Numerics follow upstream under mixed precision: layer norms and RoPE run in fp32, matmuls in the
autocast dtype. Parallelism, activation checkpointing and compilation are applied from outside.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from olmo_cli.config.schema import ModelConfig
from olmo_cli.model import packed_linear
from olmo_cli.model.init import init_weights

__all__ = [
    "OLMo",
    "OLMoBlock",
    "LayerNorm",
    "SwiGLU",
    "apply_rope",
    "block_rope_tables",
    "build_model",
    "check_supported",
    "rope_tables",
    "rotate_signed",
    "signed_sin",
]


class AttentionCache(Protocol):
    """What attention needs from a KV cache (implemented by `olmo_cli.model.generate.KVCache`)."""

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        """Stores this step's k, v [b, Hkv, t, hd] for `layer`; returns all keys and values so far (in the
        model's dtype or a wider one), the boolean attention mask (True = may attend) or None, and whether
        to apply a causal mask."""
        ...


def _autocast_enabled(device: torch.device) -> bool:
    # Meta tensors have no autocast state (asking raises), and nothing is computed on them anyway.
    return device.type != "meta" and torch.is_autocast_enabled(device.type)


class Dropout(nn.Dropout):
    """Skips the kernel entirely at p == 0 (every OLMo preset), so eval and train cost the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.p == 0.0 else F.dropout(x, self.p, self.training, self.inplace)


class LayerNorm(nn.Module):
    """Upstream's three norm flavours behind one module.

    `default`: computed in fp32. Under autocast the result stays fp32, as CUDA autocast's layer_norm
    returns it (CPU autocast does not upcast layer_norm, so we do it ourselves); the next Linear casts it
    down. Without autocast the result is cast back to the input dtype.
    `low_precision`: input (and affine params) cast to the autocast dtype, normalized there.
    `rms`: fp32 RMS norm cast back to the input dtype, then the optional affine transform.
    """

    def __init__(self, size: int, *, kind: str, eps: float, affine: bool, bias: bool) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.normalized_shape = (size,)
        if affine:
            self.weight: nn.Parameter | None = nn.Parameter(torch.ones(size))
            self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(size)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_config(cls, cfg: ModelConfig, size: int | None = None, affine: bool | None = None) -> LayerNorm:
        return cls(
            size if size is not None else cfg.d_model,
            kind=cfg.layer_norm_type,
            eps=cfg.layer_norm_eps,
            affine=cfg.layer_norm_with_affine if affine is None else affine,
            bias=cfg.bias_for_norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return self._rms(x)
        if self.kind == "low_precision":
            return self._low_precision(x)
        return self._fp32(x)

    def _fp32(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self._fp32_params():
            # Already fp32 throughout: what the general path below computes, without its casts and checks
            # (a generated token passes here twice per layer).
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        # fp32 inputs keep every autocast policy from touching the computation.
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out if _autocast_enabled(x.device) else out.to(x.dtype)

    def _fp32_params(self) -> bool:
        return all(p is None or p.dtype == torch.float32 for p in (self.weight, self.bias))

    def _low_precision(self, x: torch.Tensor) -> torch.Tensor:
        if not _autocast_enabled(x.device):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dtype = torch.get_autocast_dtype(x.device.type)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            out = self.weight * out
            if self.bias is not None:
                out = out + self.bias
        return out


class SwiGLU(nn.Module):
    """Halves the fused `ff_proj` output: the first half is the linear branch, the second the gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * up


def _activation(kind: str) -> nn.Module:
    if kind == "swiglu":
        return SwiGLU()
    if kind == "gelu":
        return nn.GELU(approximate="none")
    return nn.ReLU()


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of shape [..., len(positions), head_dim] for the half-split convention.

    Recomputed per forward rather than cached: it is T*head_dim work, needs no state (so nothing to
    materialize after a meta-device build), and any positions (a KV-cache offset) come for free.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


def _rotate(
    x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, full_precision: bool
) -> torch.Tensor:
    """x*cos + rotate_half(x)*sin, computed as x*cos + swap_halves(x)*signed_sin, signed_sin = (-sin, sin).

    The same roundings as the textbook form (fp32 results are bit-identical to it), but every operation
    runs over whole contiguous rows and in place on one working copy: three temporaries, not six.
    """
    dtype = torch.float32 if full_precision else x.dtype
    work = x.to(dtype, copy=True)
    half = x.shape[-1] // 2
    signed_sin = signed_sin.to(dtype)
    # swap_halves(x) * signed_sin, each half multiplied straight into its place (a flip is a slow
    # gather on the CPU; the products and their rounding are the same)
    swapped = torch.empty_like(work)
    torch.mul(work[..., half:], signed_sin[..., :half], out=swapped[..., :half])
    torch.mul(work[..., :half], signed_sin[..., half:], out=swapped[..., half:])
    work.mul_(cos.to(dtype)).add_(swapped)
    return work.to(x.dtype)


class _Rotary(torch.autograd.Function):
    """RoPE as one autograd node. Its backward is the inverse rotation (by -angle), so it saves only the
    tables, not the activations, and costs what the forward costs (autograd through the textbook form
    keeps fp32 copies of q and k and runs twice as many kernels)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, full_precision: bool):  # type: ignore[override]
        ctx.save_for_backward(cos, signed_sin)
        ctx.full_precision = full_precision
        return _rotate(x, cos, signed_sin, full_precision)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        cos, signed_sin = ctx.saved_tensors
        return _rotate(grad, cos, -signed_sin, ctx.full_precision), None, None, None


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """(-sin, sin) over the two halves of the last dimension: the table `rotate_signed` takes."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate_signed(
    x: torch.Tensor, cos: torch.Tensor, signed: torch.Tensor, full_precision: bool = True
) -> torch.Tensor:
    """`rotary` with the sine table already signed (`signed_sin`): one autograd node where a gradient is
    wanted, else the rotation alone (generation: no autograd bookkeeping per layer and token)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rotary.apply(x, cos, signed, full_precision)
    return _rotate(x, cos, signed, full_precision)


def rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool = True
) -> torch.Tensor:
    """Rotates x [..., hd] by tables cos/sin [..., hd] (as `rope_tables` gives them) that broadcast
    against it; with `full_precision` in fp32, rounded once to x's dtype."""
    return rotate_signed(x, cos, signed_sin(sin), full_precision)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [b, H, T, hd] and k [b, Hkv, T, hd]; cos/sin broadcast over the head dim.

    With `full_precision` (upstream's default) the rotation runs in fp32 and is cast back, so bf16 q/k
    are rounded once, not at every step.
    """
    signed = signed_sin(sin)
    return rotate_signed(q, cos, signed, full_precision), rotate_signed(k, cos, signed, full_precision)


class OLMoBlock(nn.Module):
    """Pre-norm block: fused QKV attention, then fused-input MLP, each added to the residual stream.

    Registration order (hence state-dict order) is upstream's: k_norm, q_norm, attn_out, ff_out,
    attn_norm, ff_norm, att_proj, ff_proj.
    """

    def __init__(self, layer_id: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.effective_n_kv_heads
        self.head_dim = cfg.head_dim
        self.clip_qkv = cfg.clip_qkv
        self.rope_full_precision = cfg.rope_full_precision
        self.attention_dropout = cfg.attention_dropout
        self.norm_after = cfg.norm_after
        self.dropout = Dropout(cfg.residual_dropout)
        self.k_norm: LayerNorm | None = None
        self.q_norm: LayerNorm | None = None
        if cfg.attention_layer_norm:
            affine = cfg.attention_layer_norm_with_affine
            self.k_norm = LayerNorm.from_config(cfg, self.n_kv_heads * self.head_dim, affine)
            self.q_norm = LayerNorm.from_config(cfg, cfg.d_model, affine)
        self.act = _activation(cfg.activation_type)
        bias = cfg.include_bias
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)
        self.ff_out = nn.Linear(cfg.mlp_out_width, cfg.d_model, bias=bias)
        self.attn_norm = LayerNorm.from_config(cfg)
        self.ff_norm = LayerNorm.from_config(cfg)
        kv_width = self.n_kv_heads * self.head_dim
        self.fused_dims = (cfg.d_model, kv_width, kv_width)
        self.att_proj = nn.Linear(cfg.d_model, sum(self.fused_dims), bias=bias)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """x: [b, T, d]; rope: the (cos, signed sin) tables `block_rope_tables` makes for this model, or
        None without RoPE.

        cache: a KV cache (generation); None attends causally within x alone.
        """
        att = self.attention(x if self.norm_after else self.attn_norm(x), rope, cache)
        if self.norm_after:
            att = self.attn_norm(att)
        x = x + self._residual_dropout(att)
        h = self.ff_out(self.act(self.ff_proj(x if self.norm_after else self.ff_norm(x))))
        if self.norm_after:
            h = self.ff_norm(h)
        return x + self._residual_dropout(h)

    def _residual_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.dropout.p == 0.0 else self.dropout(x)  # p == 0 in every preset: no module call

    def attention(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        b, t, _ = h.shape
        qkv = self.att_proj(h)
        if self.clip_qkv is not None:
            # On the fused output, before the split and RoPE: same as clamping q, k, v separately.
            qkv = qkv.clamp(-self.clip_qkv, self.clip_qkv)
        if rope is not None and self.q_norm is None:
            q, k, v = self._rotated_qkv(qkv, rope)
        else:
            q, k, v = qkv.split(self.fused_dims, dim=-1)
            if self.q_norm is not None and self.k_norm is not None:
                q = self.q_norm(q).to(qkv.dtype)
                k = self.k_norm(k).to(qkv.dtype)
            q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = k.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            v = v.view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
            if rope is not None:
                cos, signed = rope
                q = rotate_signed(q, cos, signed, self.rope_full_precision)
                k = rotate_signed(k, cos, signed, self.rope_full_precision)
        if cache is None:
            out = self._sdpa(q, k, v)
        else:
            # Append this step's k, v to the cache, then attend over all of it.
            k, v, mask, causal = cache.update(self.layer_id, k, v)
            # A cache may keep a low-precision model's keys in fp32 (generate.cache_dtype): attend there.
            if q.dtype == k.dtype:
                out = self._sdpa(q, k, v, mask, causal)
            else:
                out = self._sdpa(q.to(k.dtype), k, v, mask, causal).to(q.dtype)
        return self.attn_out(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))

    def _rotated_qkv(
        self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q and k rotated together in the projection's own [b, T, heads, hd] layout: one RoPE node for
        both, and q, k, v handed to attention as transposed views, without copies."""
        b, t, _ = qkv.shape
        heads, kv_heads = self.n_heads, self.n_kv_heads
        qk, v = qkv.split((self.fused_dims[0] + self.fused_dims[1], self.fused_dims[2]), dim=-1)
        qk = rotate_signed(qk.view(b, t, heads + kv_heads, self.head_dim), *rope, self.rope_full_precision)
        q, k = qk.split((heads, kv_heads), dim=2)
        v = v.view(b, t, kv_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _sdpa(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = True,
    ) -> torch.Tensor:
        if self.n_kv_heads != self.n_heads:
            # kv head m serves query heads m*g .. (m+1)*g-1, hence repeat_interleave, not repeat.
            group = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        dropout_p = self.attention_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


def block_rope_tables(positions: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cos, signed sin) tables every block of this model rotates by, made once per forward rather
    than in each layer.

    With QK norm, q and k are rotated apart, as [b, H, T, hd]: tables [..., 1, T, hd] broadcast over the
    heads. Without it, q and k are rotated together in the fused projection's own [b, T, H + Hkv, hd]
    layout: tables [..., T, H + Hkv, hd], materialized (small: no batch dimension unless positions have
    one) so the rotation's kernels run over long contiguous rows instead of broadcasting inside each row.
    """
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    signed = signed_sin(sin)
    if cfg.attention_layer_norm:
        return cos.unsqueeze(-3), signed.unsqueeze(-3)
    heads = cfg.n_heads + cfg.effective_n_kv_heads
    shape = (*cos.shape[:-1], heads, cfg.head_dim)
    return cos.unsqueeze(-2).expand(shape).contiguous(), signed.unsqueeze(-2).expand(shape).contiguous()


class RopeMemo:
    """`block_rope_tables` for positions 0..size-1, made once (a generation's KV cache keeps it); each
    forward takes its positions' rows instead of computing the tables again: one indexing per table in
    place of some fifteen small operations, per generated token."""

    def __init__(self, cfg: ModelConfig, size: int, device: torch.device) -> None:
        self.size = size
        self.device = device
        self.qk_norm = cfg.attention_layer_norm
        cos, signed = block_rope_tables(torch.arange(size, device=device), cfg)
        # Kept as [size, ...] so that positions [T] or [b, T] index the first dimension.
        self.cos, self.signed = (cos[0], signed[0]) if self.qk_norm else (cos, signed)

    def take(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, signed = self.cos[positions], self.signed[positions]
        return (cos.unsqueeze(-3), signed.unsqueeze(-3)) if self.qk_norm else (cos, signed)


def check_supported(cfg: ModelConfig) -> None:
    """Raises ValueError naming every architecture switch this model does not implement."""
    problems = []
    if cfg.alibi:
        problems.append("alibi: ALiBi attention biases are not implemented (use rope: true)")
    if cfg.block_type != "sequential":
        problems.append(f"block_type: {cfg.block_type!r} is not implemented (only 'sequential')")
    if cfg.block_group_size != 1:
        problems.append(
            f"block_group_size: {cfg.block_group_size} is not implemented (use 1; upstream "
            "block_groups checkpoints load through normalize_upstream_keys)"
        )
    if problems:
        raise ValueError("unsupported model configuration: " + "; ".join(problems))


class OLMo(nn.Module):
    """The decoder-only language model; `forward(input_ids) -> logits` over the padded vocabulary."""

    # Whether a tied output projection takes the packed inference matmul (`model/packed_linear.enable`).
    packed_head = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_supported(cfg)
        self.config = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.padded_vocab_size, cfg.d_model),
                "emb_drop": Dropout(cfg.embedding_dropout),
                "ln_f": LayerNorm.from_config(cfg),
            }
        )
        self.transformer["blocks"] = nn.ModuleList(OLMoBlock(i, cfg) for i in range(cfg.n_layers))
        if not cfg.rope:
            # Learned absolute positions: upstream's fallback when neither RoPE nor ALiBi is on.
            self.transformer["wpe"] = nn.Embedding(cfg.max_sequence_length, cfg.d_model)
        if not cfg.weight_tying:
            self.transformer["ff_out"] = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=cfg.include_bias)
        if cfg.embedding_layer_norm:
            self.transformer["emb_norm"] = LayerNorm.from_config(cfg)

    def _rope(
        self, positions: torch.Tensor, cache: AttentionCache | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cache is not None and not torch.is_grad_enabled():
            memo = _rope_memo_for(cache, self.config, positions.device)
            if memo is not None:
                return memo.take(positions)
        return block_rope_tables(positions, self.config)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
        *,
        last_only: bool = False,
    ) -> torch.Tensor:
        """input_ids: [b, T] int64 -> logits [b, T, padded_vocab_size].

        positions: [T] or [b, T] token positions, default 0..T-1 (upstream never resets them per
        document); a KV cache passes its offset here.
        cache: the KV cache of generation (`olmo_cli.model.generate.KVCache`), which each block reads and
        appends to; None (training, scoring) attends causally within input_ids.
        last_only: logits of the last position alone, [b, 1, V] (a prefill that only picks the next
        token: the output projection of the other positions is most of a small model's prefill).
        """
        cfg = self.config
        t = input_ids.shape[1]
        if positions is None:
            positions = torch.arange(t, device=input_ids.device)
        x = self.transformer["wte"](input_ids)
        if cfg.embedding_layer_norm:
            x = self.transformer["emb_norm"](x)
        if not cfg.rope:
            x = x + self.transformer["wpe"](positions)
        x = self.transformer["emb_drop"](x)
        rope = None
        if cfg.rope:
            rope = self._rope(positions, cache)
        for block in self.transformer["blocks"]:
            # The cache only when there is one: wrapped blocks (checkpointing, FSDP) see today's call.
            x = block(x, rope) if cache is None else block(x, rope, cache)
        if last_only:
            x = x[:, -1:]
        x = self.transformer["ln_f"](x)
        if cfg.weight_tying:
            weight = self.transformer["wte"].weight
            logits = packed_linear.linear(x, weight) if self.packed_head else F.linear(x, weight)
        else:
            logits = self.transformer["ff_out"](x)
        if cfg.scale_logits:
            logits = logits * (1 / math.sqrt(cfg.d_model))
        return logits


def _rope_memo_for(cache: object, cfg: ModelConfig, device: torch.device) -> RopeMemo | None:
    """The cache's RoPE memo, made at its first forward (positions never reach its capacity)."""
    capacity = getattr(cache, "capacity", None)
    if not isinstance(capacity, int):
        return None
    memo = getattr(cache, "rope_memo", None)
    if not isinstance(memo, RopeMemo) or memo.size != capacity or memo.device != device:
        memo = RopeMemo(cfg, capacity, device)
        cache.rope_memo = memo  # type: ignore[attr-defined]
    return memo


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", *, seed: int | None = None) -> OLMo:
    """Builds on the meta device (no memory, instant at any size), then materializes and initializes.

    With device "meta" the parameters stay unallocated, for a caller that shards or loads them itself.
    `seed` makes the initialization reproducible through a private generator (the global RNG is not
    touched).
    """
    device = torch.device(device)
    with torch.device("meta"):
        model = OLMo(cfg)
    if device.type == "meta":
        return model
    model.to_empty(device=device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    init_weights(model, cfg, generator)
    return model
