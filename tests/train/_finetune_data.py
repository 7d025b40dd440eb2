"""Finetuning test material: a synthetic chat task tokenized by the project's chat pipeline, a tiny
random-init base checkpoint in our layout, quiet finetune runs, and exact-match accuracy measured with
greedy generation from the prompts `olmo generate --chat` builds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from olmo_cli.config.schema import TrainConfig
from olmo_cli.data.chat import render_prompt
from olmo_cli.data.tokenize import TokenizeOptions, tokenize
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.load.build import load_model
from olmo_cli.load.read import read_checkpoint
from olmo_cli.model.generate import GenerationSettings, generate_ids
from olmo_cli.train.finetune import FinetuneRequest, build_finetune_config
from olmo_cli.train.run import RunOptions, RunResult, run
from tests._fixtures import model_config, write_checkpoint

TOKENIZER = "builtin:tiny-bpe-4096"  # eos 0, pad 1
SEQ = 64

# The same architecture as the tiny preset (no biases, non-parametric norms, RoPE, SwiGLU, tied), smaller.
MODEL = model_config(
    4096,
    d_model=64,
    max_sequence_length=SEQ,
    init_fn="mitchell",
    bias_for_layer_norm=False,
    attention_layer_norm_with_affine=False,
)


def answer(digit: int, shift: int = 3) -> str:
    """The task: the question `x=d` is answered with (d + shift) mod 10."""
    return str((digit + shift) % 10)


def question(digit: int) -> str:
    return f"x={digit}"


def chat_data(directory: Path, conversations: int = 2000, seed: int = 0, shift: int = 3) -> Path:
    """`olmo data tokenize --chat` output for `conversations` random questions, with label masks."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    source = directory / "chats.jsonl"
    with open(source, "w", encoding="utf-8") as f:
        for _ in range(conversations):
            d = rng.randrange(10)
            reply = answer(d, shift)
            messages = [{"role": "user", "content": question(d)}, {"role": "assistant", "content": reply}]
            f.write(json.dumps({"messages": messages}) + "\n")
    out = directory / "sft"
    tokenize([str(source)], TOKENIZER, out, TokenizeOptions(chat=True, processes=1))
    return out


def base_config(**updates: Any) -> TrainConfig:
    return TrainConfig(
        run_name="base",
        model=MODEL,
        tokenizer={"identifier": TOKENIZER},
        global_train_batch_size=16,
        device_train_microbatch_size=4,
        precision="fp32",
        data={"drop_last": True},
        save_interval=1000,
        gen1_gc_interval=None,
        **updates,
    )


def base_checkpoint(directory: Path, seed: int = 1, cfg: TrainConfig | None = None) -> Path:
    """A random-init model saved as one of our unsharded checkpoints (no optimizer or trainer state)."""
    return write_checkpoint(directory, cfg or base_config(), seed)[0]


def finetune_config(base: Path, data: Path, save: Path, *overrides: str, **request: Any) -> TrainConfig:
    cfg, _ = build_finetune_config(
        FinetuneRequest(checkpoint=base, data=[str(data)], save_folder=save, overrides=overrides, **request)
    )
    return cfg


def quiet(cfg: TrainConfig, **options: Any) -> RunResult:
    options.setdefault("device", "cpu")
    options.setdefault("peak_flops", 1e12)
    return run(cfg, events=lambda event: None, options=RunOptions(**options))


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/CrossEntropyLoss"] for m in metrics(run_dir)}


def accuracy(checkpoint: Path, shift: int = 3) -> tuple[float, list[str]]:
    """Exact-match accuracy over the ten questions, greedy, prompts rendered as `olmo generate --chat`."""
    tokenizer = resolve_tokenizer(TOKENIZER)
    model = load_model(read_checkpoint(checkpoint))
    prompts = [
        render_prompt([("user", question(d))], tokenizer.tokenizer, 0, tokenizer.eos_token) for d in range(10)
    ]
    settings = GenerationSettings(max_new_tokens=4, eos_token_id=0, pad_token_id=1)
    texts = [tokenizer.decode(g.token_ids) for g in generate_ids(model, prompts, settings)]
    return sum(t == answer(d, shift) for d, t in enumerate(texts)) / 10, texts


def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).double()
