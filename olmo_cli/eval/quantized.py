"""What quantizing a checkpoint cost and bought: size on disk, perplexity and generation speed.

Perplexity is upstream's "lm" evaluator metric (`olmo_cli.eval.perplexity`) over token files; speed is
greedy KV-cache generation (`olmo_cli.model.generate`) of a fixed number of tokens after a prompt taken
from the same data, best of a few runs after a warm-up (the machine may be shared).
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
    from olmo_cli.data.dataset import MemmapDataset
    from olmo_cli.model.olmo import OLMo

__all__ = ["Measurement", "common_prefix", "eval_dataset", "measure", "prompt_from", "weights_bytes"]

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


def eval_dataset(data: Sequence[str], config: TrainConfig) -> MemmapDataset:
    """Instances of the model's sequence length from token files/directories (`olmo data tokenize`)."""
    from olmo_cli.data.dataset import dataset_from_token_files
    from olmo_cli.data.paths import expand_data_paths

    files = expand_data_paths(list(data))
    dtypes = {f.manifest.dtype for f in files if f.manifest is not None}
    dtype = dtypes.pop() if len(dtypes) == 1 else config.data.memmap_dtype
    return dataset_from_token_files(files, config.model.max_sequence_length, dtype)


def prompt_from(dataset: MemmapDataset, length: int = PROMPT_TOKENS) -> list[int]:
    return [int(t) for t in dataset[0].input_ids[:length]]


@dataclass
class Measurement:
    cross_entropy: float
    perplexity: float
    tokens_per_second: dict[int, float] = field(default_factory=dict)
    """Generation speed by batch size."""
    greedy: list[int] = field(default_factory=list)
    """The greedy continuation of the prompt (batch 1), to compare before and after."""


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
    dataset: MemmapDataset,
    *,
    seed: int,
    eval_batch_size: int = 8,
    max_batches: int | None = None,
    new_tokens: int = 32,
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 2,
) -> Measurement:
    """Perplexity over `dataset` (every instance unless `max_batches`) and generation speed."""
    from olmo_cli.eval.perplexity import evaluate_perplexity

    metrics = evaluate_perplexity(
        model,
        dataset,
        batch_size=eval_batch_size,
        world=None,
        autocast_dtype=None,
        seed=seed,
        max_batches=max_batches,
        drop_last=False,
    )
    prompt = prompt_from(dataset)
    room = model.config.max_sequence_length - len(prompt)
    new_tokens = max(1, min(new_tokens, room))
    speed = {b: _tokens_per_second(model, prompt, b, new_tokens, repeats) for b in batch_sizes}
    greedy = generate_ids(model, [prompt], GenerationSettings(max_new_tokens=new_tokens, eos_token_id=None))
    return Measurement(metrics["CrossEntropyLoss"], metrics["Perplexity"], speed, greedy[0].token_ids)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two continuations share."""
    n = 0
    for x, y in zip(a, b, strict=False):  # the shorter one bounds the count
        if x != y:
            break
        n += 1
    return n
