"""A tiny model trained on a synthetic lookup task, saved as a checkpoint with its tokenizer: the
multiple-choice task built from it has an accuracy known in advance.

Training text is "Q: k3 A: v1" pairs from a fixed key -> value table. The task asks "Q: k3 A:" with
the eight values as choices; half of its documents name the table's value as gold and half name
another value, so a model that learned the table scores exactly 0.5 (acc and len_norm alike: every
choice has the same length).
"""

from __future__ import annotations

from pathlib import Path

import torch

from olmo_cli.config.schema import TrainConfig
from olmo_cli.eval.formats import Doc
from olmo_cli.eval.taskfile import TaskData, write_task_file
from olmo_cli.model.olmo import OLMo, build_model
from tests._fixtures import tiny_config, write_checkpoint
from tests.eval._helpers import one_thread, word_tokenizer

KEYS = [f"k{i}" for i in range(8)]
VALUES = [f"v{i}" for i in range(8)]
TABLE = {i: (3 * i + 1) % 8 for i in range(8)}  # a permutation
WORDS = ["Q:", "A:", *KEYS, *VALUES]
VOCAB = 32


def config(tokenizer_file: Path) -> TrainConfig:
    return tiny_config(
        *("model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.max_sequence_length=32"),
        *(f"model.vocab_size={VOCAB}", f"model.embedding_size={VOCAB}"),
        *("model.eos_token_id=0", "model.pad_token_id=1", f"tokenizer.identifier={tokenizer_file}"),
    )


def train(model: OLMo, tokenizer, steps: int = 60, seed: int = 0) -> OLMo:
    generator = torch.Generator().manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        keys = torch.randint(0, 8, (16, 4), generator=generator)
        texts = [" ".join(f"Q: k{k} A: v{TABLE[int(k)]}" for k in row) for row in keys]
        ids = torch.tensor([tokenizer.encode(t, add_special_tokens=False) for t in texts])
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model.eval()


def lookup_task() -> TaskData:
    docs = []
    for repeat in range(2):
        for i in range(8):
            gold = TABLE[i] if i % 2 == 0 else (TABLE[i] + 1 + repeat) % 8  # odd keys: a wrong gold
            docs.append(Doc.shared_context(f"Q: k{i} A:", [f" {v}" for v in VALUES], gold))
    return TaskData("lookup", "acc", docs, version="1")


def trained_checkpoint(directory: Path) -> tuple[Path, OLMo]:
    """(checkpoint dir, model): the trained model saved with config.yaml and tokenizer.json."""
    tokenizer = word_tokenizer(WORDS)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_file = directory / "words.json"
    tokenizer_file.write_text(tokenizer.json_text)
    cfg = config(tokenizer_file)
    with one_thread():
        model = train(build_model(cfg.model, seed=0), tokenizer)
    path, _ = write_checkpoint(directory, cfg, model=model, name="step60-unsharded")
    (path / "tokenizer.json").write_text(tokenizer.json_text)
    return path, model


def write_lookup_task(path: Path) -> Path:
    write_task_file(lookup_task(), path)
    return path
