"""Small training runs for the trainer tests: token data with a learnable pattern, a few-thousand-parameter
config around it, and a quiet `run()` that collects the events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from olmo_cli.config.schema import DataConfig, TrainConfig
from olmo_cli.train.events import Event
from olmo_cli.train.run import RunOptions, RunResult, run
from tests._fixtures import small

SEQ = 16
VOCAB = 60  # tests._fixtures.SMALL: vocab 60 padded to 64


def pattern_tokens(n: int, seed: int, vocab: int = VOCAB) -> np.ndarray:
    """Runs of counting (t, t+1, t+2, ...) from random starts: easy to learn, so a loss visibly falls."""
    rng = np.random.default_rng(seed)
    out = []
    while sum(len(x) for x in out) < n:
        start, length = int(rng.integers(0, vocab)), int(rng.integers(5, 40))
        out.append((start + np.arange(length)) % vocab)
    return np.concatenate(out)[:n].astype(np.uint16)


def write_token_dir(directory: Path, tokens: np.ndarray, *, eos: int = 0, parts: int = 1) -> Path:
    """A token directory as `olmo data tokenize` writes it (raw uint16 parts + manifest.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, chunk in enumerate(np.array_split(tokens, parts)):
        name = f"part-{i:05d}.npy"
        chunk.astype("<u2").tofile(directory / name)
        files.append({"path": name, "tokens": len(chunk), "documents": int((chunk == eos).sum())})
    manifest = {
        "format": "olmo-tokens/1",
        "tokenizer": {"identifier": "builtin:tiny-bpe-4096", "vocab_size": 4096, "eos_token_id": eos},
        "dtype": "uint16",
        "files": files,
        "documents": sum(f["documents"] for f in files),
        "tokens": len(tokens),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def run_config(tmp_path: Path, *, instances: int = 64, **updates: Any) -> TrainConfig:
    """The tiny preset shrunk to d_model 32, 2 layers, 16 tokens, trained on `instances` instances of
    pattern data in `tmp_path/data`, saving to `tmp_path/run`."""
    data_dir = tmp_path / "data"
    if not data_dir.exists():
        write_token_dir(data_dir, pattern_tokens(instances * SEQ + 5, seed=1))
    cfg = small("tiny")
    base: dict[str, Any] = {
        "data": DataConfig(paths=[str(data_dir)], drop_last=True),
        "evaluators": [],
        "save_folder": str(tmp_path / "run"),
        "global_train_batch_size": 8,
        "device_train_microbatch_size": 4,
        "device_eval_batch_size": 4,
        "max_duration": 6,
        "stop_at": 6,
        "save_interval": 3,
        "save_num_checkpoints_to_keep": -1,
        "eval_interval": 1000,
        "precision": "fp32",
        "wandb": None,
        "gen1_gc_interval": None,
    }
    base.update(updates)
    return TrainConfig.model_validate({**cfg.model_dump(), **base})


def quiet_run(cfg: TrainConfig, **options: Any) -> tuple[RunResult, list[Event]]:
    """run() on the CPU with a fixed peak (no measuring), collecting its events."""
    events: list[Event] = []
    options.setdefault("device", "cpu")
    options.setdefault("peak_flops", 1e12)
    result = run(cfg, events=events.append, options=RunOptions(**options))
    return result, events


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/CrossEntropyLoss"] for m in metrics(run_dir)}
