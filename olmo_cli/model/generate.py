"""Text generation with a KV cache: greedy or sampled (temperature, top-k, top-p), batched with left
padding, stopping at EOS, stop strings or a token budget, streaming text as it comes.

Two layers: `generate_ids` works on token ids only (the model loop); `generate_text` adds a tokenizer
for stop strings and streamed text. Neither prints: progress goes to the callbacks given.

The cache is preallocated for prompt + max_new_tokens, so a step writes in place and never
concatenates. Left-padded rows get positions counted from their first real token (as transformers
does), so a prompt generates the same tokens alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from olmo_cli.model import packed_linear
from olmo_cli.model.olmo import OLMo

if TYPE_CHECKING:
    from olmo_cli.config.schema import ModelConfig

__all__ = [
    "cache_dtype",
    "check_cache_fits",
    "Completion",
    "Generated",
    "GenerationSettings",
    "KVCache",
    "TextStream",
    "choose_next",
    "generate_ids",
    "generate_text",
    "warp_logits",
]

FinishReason = Literal["eos", "stop", "length"]


def cache_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """The dtype a KV cache keeps keys and values in for a model computing in `dtype` on `device`.

    On a CPU, fp32 for a bf16/fp16 model: its attention kernels at one query per row are 4-6x faster in
    fp32 than in bf16 (and the cache holds the bf16-rounded keys exactly). Twice the cache memory, which
    `KVCache.bytes_for` counts. Elsewhere the model's own dtype.
    """
    if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return dtype


def model_placement(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device the model computes in, read from its first floating-point parameter.

    Not `wte.weight`: on a quantized model that property dequantizes the whole embedding table."""
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.dtype, param.device


class KVCache:
    """Keys and values of every layer, preallocated as [layers, b, Hkv, capacity, hd].

    `key_valid` [b, capacity] marks real tokens (False at left padding); None means no padding, and then
    no mask tensor is built at all: a one-token step sees every cached key, and a prefill from empty
    is plain causal attention.
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        key_valid: torch.Tensor | None = None,
    ) -> None:
        shape = (n_layers, batch, n_kv_heads, capacity, head_dim)
        # Uninitialized: only positions already written (0..length) are ever read.
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        # Per-layer views taken once: indexing the 5-d buffers every layer and step costs more than the
        # copy itself for small models.
        self._layer_kv = [(self.keys[i], self.values[i]) for i in range(n_layers)]
        self.n_layers = n_layers
        self.capacity = capacity
        self.length = 0
        self.key_valid = key_valid
        self._mask_for: tuple[int, int] | None = None
        self._mask: tuple[torch.Tensor | None, bool] = (None, True)

    @classmethod
    def for_model(
        cls, model: OLMo, batch: int, capacity: int, key_valid: torch.Tensor | None = None
    ) -> KVCache:
        cfg = model.config
        dtype, device = model_placement(model)
        return cls(
            cfg.n_layers,
            batch,
            cfg.effective_n_kv_heads,
            cfg.head_dim,
            capacity,
            dtype=cache_dtype(dtype, device),
            device=device,
            key_valid=key_valid,
        )

    @staticmethod
    def bytes_for(
        cfg: ModelConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> int:
        """What `for_model` allocates for a model in `dtype` on `device`: keys and values of every layer
        (in `cache_dtype`), plus the key mask."""
        itemsize = cache_dtype(dtype, device).itemsize
        per_token = 2 * cfg.n_layers * cfg.effective_n_kv_heads * cfg.head_dim * itemsize
        return batch * capacity * (per_token + 1)

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
        start = self.length
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; step would reach {end}")
        keys, values = self._layer_kv[layer]
        keys.narrow(2, start, end - start).copy_(k)
        values.narrow(2, start, end - start).copy_(v)
        mask, causal = self._attention_mask(start, end)
        if layer == self.n_layers - 1:  # every layer has seen this step: it is now part of the past
            self.length = end
        return keys.narrow(2, 0, end), values.narrow(2, 0, end), mask, causal

    def _attention_mask(self, start: int, end: int) -> tuple[torch.Tensor | None, bool]:
        """(mask, causal) for queries at positions start..end-1; built once per step, shared by layers."""
        if self._mask_for == (start, end):
            return self._mask
        t = end - start
        device = self.keys.device
        if self.key_valid is None and t == 1:
            result: tuple[torch.Tensor | None, bool] = (None, False)
        elif self.key_valid is None and start == 0:
            result = (None, True)
        else:
            query_pos = torch.arange(start, end, device=device)[:, None]
            mask = torch.arange(end, device=device)[None, :] <= query_pos  # [t, end], bottom-right causal
            if self.key_valid is not None:
                mask = mask & self.key_valid[:, None, :end]  # [b, t, end]
                # A padding query would see no key at all (softmax of nothing is NaN, and NaN values
                # poison even zero-weighted sums later): let it see itself; its output is never used.
                mask = mask | (torch.arange(end, device=device)[None, :] == query_pos)
                mask = mask[:, None]  # [b, 1, t, end]
            result = (mask, False)
        self._mask_for, self._mask = (start, end), result
        return result


@dataclass(frozen=True)
class GenerationSettings:
    """How to pick tokens. temperature 0 is greedy (top_k and top_p then do nothing)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def warp_logits(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """fp32 scores for sampling, in transformers' order: temperature, then top-k, then top-p; tokens
    filtered out are -inf. Needs temperature > 0."""
    scores = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < scores.shape[-1]:
        kth = torch.topk(scores, settings.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - settings.top_p
        drop[..., -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def choose_next(
    logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [b, V] -> next token ids [b]: argmax at temperature 0, else a draw from `warp_logits`."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = warp_logits(logits, settings).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Generated:
    """One row's new tokens (EOS not included) and why it stopped."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason = "length"


# Called after every step with the row and its new token; returning True finishes that row ("stop").
TokenCallback = Callable[[int, int], bool]


def _left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[b, T] ids, left-padded, and the [b, T] mask of real tokens (None when no row is padded)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    real = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        real[row, width - len(prompt) :] = True
    padded = not bool(real.all())
    return ids.to(device), real.to(device) if padded else None


def _generator(settings: GenerationSettings, device: torch.device) -> torch.Generator | None:
    if settings.temperature == 0 or settings.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    return generator


@torch.inference_mode()
def generate_ids(
    model: OLMo,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    on_token: TokenCallback | None = None,
) -> list[Generated]:
    """Generates up to `settings.max_new_tokens` tokens after each prompt, all rows in one batch.

    A row finishes at EOS (not included in its tokens), when `on_token` returns True for it, or at the
    budget. Finished rows are fed the pad token until every row is done, as transformers does.
    The model should be in eval mode (dropout off), as `load_model` returns it.
    """
    _, device = model_placement(model)
    packed_linear.enable(model)
    ids, real = _left_pad(prompts, settings.pad_token_id, device)
    batch, width = ids.shape
    capacity = width + settings.max_new_tokens
    key_valid = None
    if real is not None:
        key_valid = torch.ones((batch, capacity), dtype=torch.bool, device=device)
        key_valid[:, :width] = real
        positions = (real.long().cumsum(dim=-1) - 1).clamp(min=0)  # [b, T], 0 at the first real token
    else:
        positions = torch.arange(width, device=device)
    cache = KVCache.for_model(model, batch, capacity, key_valid)
    generator = _generator(settings, device)
    results = [Generated() for _ in range(batch)]
    active = list(range(batch))
    logits = model(ids, positions, cache, last_only=True)[:, -1]
    next_pos = positions[..., -1:] + 1  # [b, 1] or [1]
    for step in range(settings.max_new_tokens):
        tokens = choose_next(logits, settings, generator)
        active = _record(tokens.tolist(), active, results, settings, on_token)
        if not active or step == settings.max_new_tokens - 1:
            break
        fed = tokens
        if len(active) < batch:
            done = torch.ones(batch, dtype=torch.bool)
            done[active] = False
            fed = tokens.masked_fill(done.to(device), settings.pad_token_id)
        logits = model(fed[:, None], next_pos, cache)[:, -1]
        next_pos = next_pos + 1
    return results


def _record(
    tokens: list[int],
    active: list[int],
    results: list[Generated],
    settings: GenerationSettings,
    on_token: TokenCallback | None,
) -> list[int]:
    """Appends each active row's token; returns the rows still active."""
    still = []
    for row in active:
        token = tokens[row]
        if token == settings.eos_token_id:
            results[row].finish_reason = "eos"
            continue
        results[row].token_ids.append(token)
        if on_token is not None and on_token(row, token):
            results[row].finish_reason = "stop"
            continue
        still.append(row)
    return still


class TextStream:
    """Turns one row's tokens into text deltas that are safe to show: never half a UTF-8 character, and
    never the start of a stop string that may still complete (it is held back until it cannot)."""

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stop_strings = [s for s in stop_strings if s]
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Adds a token; returns the new text that can be shown now. Sets `stopped` at a stop string."""
        self.ids.append(token)
        full = self.decode(self.ids)
        if full.endswith("\ufffd"):  # a character split across tokens: wait for the rest of its bytes
            return ""
        cut = min((i for s in self.stop_strings if (i := full.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = full[:cut]
            return self._emit(self.text)
        self.text = full
        return self._emit(full[: len(full) - self._held_back(full)])

    def finish(self) -> str:
        """The rest of the text once the row is done (a held-back partial stop string is real text)."""
        if not self.stopped:
            self.text = self.decode(self.ids)
        return self._emit(self.text)

    def _held_back(self, text: str) -> int:
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, upto: str) -> str:
        delta = upto[self.emitted :]
        self.emitted = max(self.emitted, len(upto))
        return delta


@dataclass
class Completion:
    """A prompt's generated text and tokens (the stop string and EOS are not in the text)."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: FinishReason


class Decoder(Protocol):
    """What text generation needs of a tokenizer (`olmo_cli.data.tokenizer.ResolvedTokenizer` is one)."""

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str: ...


def generate_text(
    model: OLMo,
    tokenizer: Decoder,
    prompts: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
) -> list[Completion]:
    """`generate_ids` plus text: stop strings end a row, and `on_text(row, delta)` streams each row's
    text as it becomes final."""
    streams = [TextStream(tokenizer.decode, stop_strings) for _ in prompts]

    def on_token(row: int, token: int) -> bool:
        delta = streams[row].push(token)
        if delta and on_text is not None:
            on_text(row, delta)
        return streams[row].stopped

    generated = generate_ids(model, prompts, settings, on_token=on_token if stop_strings or on_text else None)
    completions = []
    for row, (stream, result) in enumerate(zip(streams, generated, strict=True)):
        if not stop_strings and on_text is None:
            stream.ids = list(result.token_ids)
        rest = stream.finish()
        if rest and on_text is not None:
            on_text(row, rest)
        completions.append(Completion(stream.text, result.token_ids, len(prompts[row]), result.finish_reason))
    return completions


def check_cache_fits(
    cfg: ModelConfig,
    longest_prompt: int,
    batch: int,
    max_new_tokens: int,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Raises UsageError, before the model loads, when the KV cache for `batch` rows of the longest prompt
    plus `max_new_tokens` cannot fit in the device's memory (with the weights beside it)."""
    from olmo_cli.config.derived import num_params
    from olmo_cli.errors import UsageError
    from olmo_cli.memory import device_memory, human_bytes

    have = device_memory(device)
    if have is None:
        return
    weights = num_params(cfg) * dtype.itemsize
    need = KVCache.bytes_for(cfg, batch, longest_prompt + max_new_tokens, dtype, device)
    if weights + need <= have:
        return
    per_token = KVCache.bytes_for(cfg, batch, 1, dtype, device)
    fits = max((have - weights) // per_token - longest_prompt, 0)
    raise UsageError(
        f"--max-new-tokens {max_new_tokens:,} needs a KV cache of {human_bytes(need)} for {batch} "
        f"prompt(s), more than the {human_bytes(have)} of this {device.type} device",
        hint=f"ask for at most about {fits:,} new tokens, or fewer prompts at a time (--batch-size)",
    )
