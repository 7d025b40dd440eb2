"""What quantizing a checkpoint cost and bought: size on disk, perplexity and generation speed.

Perplexity is token-weighted, exactly as `olmo eval --perplexity` computes it over the same token files
(`olmo_cli.eval.perplexity_sources`: consecutive windows of the model's sequence length, summed NLL over
every predicted token); speed is greedy KV-cache generation (`olmo_cli.model.generate`) of a fixed
number of tokens after a prompt taken from the same data, best of a few runs after a warm-up (the
machine may be shared).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from olmo_cli.model.generate import GenerationSettings, generate_ids

if TYPE_CHECKING:
    from olmo_cli.checkpoint.weights import CheckpointWeights
    from olmo_cli.config.schema import TrainConfig
    from olmo_cli.eval.perplexity_sources import PplSource
    from olmo_cli.model.olmo import OLMo

__all__ = ["Measurement", "common_prefix", "eval_source", "measure", "prompt_from", "weights_bytes"]

PROMPT_TOKENS = 16


def weights_bytes(checkpoint: CheckpointWeights) -> int:
    """Bytes on disk of the files holding the model weights (not optimizer or trainer state)."""
    from olmo_cli.checkpoint.layout import resolve_state_file
    from olmo_cli.quant.settings import WEIGHTS_FILE

    path = checkpoint.path
    if checkpoint.kind == "quantized":
        return (path / WEIGHTS_FILE).stat().st_size
    if checkpoint.kind == "unsharded":
        found = resolve_state_file(path, "model")
        if found is not None:
            return found.stat().st_size
    if checkpoint.kind == "hf":
        files = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
        if files:
            return sum(f.stat().st_size for f in files)
    # A sharded checkpoint mixes weights with optimizer state: count the fp32 weights themselves.
    return sum(t.numel() * t.element_size() for t in checkpoint.state.values())


def eval_source(data: Sequence[str], config: TrainConfig) -> PplSource:
    """The token streams of token files/directories (`olmo data tokenize`), checked to hold at least one
    predicted token, before any work."""
    import numpy as np

    from olmo_cli.data.paths import expand_data_paths
    from olmo_cli.errors import DataError
    from olmo_cli.eval.perplexity_sources import PplSource

    files = expand_data_paths(list(data))
    streams = []
    for file in files:
        dtype = file.manifest.dtype if file.manifest is not None else config.data.memmap_dtype
        try:
            streams.append(np.memmap(file.path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r"))
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read token file {file.path}: {e}") from e
    if sum(len(s) for s in streams) < 2 or max(len(s) for s in streams) < 2:
        raise DataError(f"--eval {', '.join(data)} holds no tokens to predict", hint="give more token data")
    return PplSource("eval", "tokens", [str(f.path) for f in files], streams)


def prompt_from(source: PplSource, length: int = PROMPT_TOKENS) -> list[int]:
    stream = next(s for s in source.streams if len(s) >= 2)
    return [int(t) for t in stream[:length]]


@dataclass
class Measurement:
    cross_entropy: float
    perplexity: float
    tokens_per_second: dict[int, float] = field(default_factory=dict)
    """Generation speed by batch size."""
    greedy: list[int] = field(default_factory=list)
    """The greedy continuation of the prompt (batch 1), to compare before and after."""
    tokens: int = 0
    """Predicted tokens the perplexity is over."""


def _tokens_per_second(model: OLMo, prompt: list[int], batch: int, new_tokens: int, repeats: int) -> float:
    settings = GenerationSettings(max_new_tokens=new_tokens, eos_token_id=None)
    generate_ids(model, [prompt] * batch, GenerationSettings(max_new_tokens=2, eos_token_id=None))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate_ids(model, [prompt] * batch, settings)
        best = min(best, time.perf_counter() - start)
    return batch * new_tokens / best


def measure(
    model: OLMo,
    source: PplSource,
    *,
    eval_batch_size: int = 8,
    max_batches: int | None = None,
    new_tokens: int = 32,
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 2,
) -> Measurement:
    """Token-weighted perplexity over `source` (windows of the model's sequence length; every window
    unless `max_batches` of `eval_batch_size` windows) and generation speed."""
    import numpy as np

    from olmo_cli.eval.perplexity_sources import evaluate_source

    seq_len = model.config.max_sequence_length
    max_tokens = None if max_batches is None else max_batches * eval_batch_size * (seq_len - 1)
    no_bytes = np.zeros(model.config.padded_vocab_size, dtype=np.int64)  # bits per byte is not reported
    result = evaluate_source(
        model, source, no_bytes, seq_len=seq_len, batch_size=eval_batch_size, max_tokens=max_tokens
    )
    prompt = prompt_from(source)
    room = model.config.max_sequence_length - len(prompt)
    new_tokens = max(1, min(new_tokens, room))
    speed = {b: _tokens_per_second(model, prompt, b, new_tokens, repeats) for b in batch_sizes}
    greedy = generate_ids(model, [prompt], GenerationSettings(max_new_tokens=new_tokens, eos_token_id=None))
    return Measurement(result.cross_entropy, result.perplexity, speed, greedy[0].token_ids, result.tokens)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two continuations share."""
    n = 0
    for x, y in zip(a, b, strict=False):  # the shorter one bounds the count
        if x != y:
            break
        n += 1
    return n
