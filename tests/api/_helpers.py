"""A tiny chat model trained in a second or two: the tiny preset (built-in tokenizer) at d_model 32 and 64
positions, taught a few exchanges in the Tulu chat format, so its greedy replies are real text that ends
at EOS."""

from __future__ import annotations

from pathlib import Path

import torch

from olmo_cli.config.schema import TrainConfig
from olmo_cli.data.chat import render_conversation
from olmo_cli.data.tokenizer import resolve_tokenizer
from olmo_cli.model.olmo import build_model
from tests._fixtures import tiny_config, write_checkpoint
from tests.eval._helpers import one_thread

EXCHANGES = [
    ("Hi", "Hello there!"),
    ("Name a river.", "The Nile."),
    ("What is two plus two?", "Four."),
    ("Say something nice.", "You are doing great."),
]
CONTEXT = 64


def chat_config() -> TrainConfig:
    return tiny_config(
        "model.d_model=32",
        "model.n_heads=4",
        "model.n_layers=2",
        f"model.max_sequence_length={CONTEXT}",
        "model.init_std=0.1",
    )


def trained_chat_checkpoint(directory: Path, steps: int = 80) -> Path:
    """An unsharded checkpoint (config.yaml, no tokenizer file: the config's built-in one) of the model
    trained on EXCHANGES, each as a one-turn conversation."""
    cfg = chat_config()
    tokenizer = resolve_tokenizer(
        cfg.tokenizer.identifier, eos_token_id=cfg.model.eos_token_id, pad_token_id=cfg.model.pad_token_id
    )
    rows = []
    for user, assistant in EXCHANGES:
        ids, _ = render_conversation(
            [("user", user), ("assistant", assistant)],
            tokenizer.tokenizer,
            tokenizer.identity.eos_token_id,
            tokenizer.eos_token,
        )
        rows.append(ids)
    width = max(map(len, rows))
    pad = cfg.model.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    labels = ids.clone()
    labels[ids == pad] = -100
    with one_thread():
        model = build_model(cfg.model, seed=0)
        optim = torch.optim.AdamW(model.parameters(), lr=3e-2)
        model.train()
        for _ in range(steps):
            logits = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            optim.zero_grad()
            loss.backward()
            optim.step()
    path, _ = write_checkpoint(directory, cfg, model=model.eval(), name=f"step{steps}-unsharded")
    return path
