"""Train a tiny OLMo 2 model with upstream's own trainer (allenai/OLMo `scripts/train.py`) on the CPU, then
resume its checkpoint with `olmo resume` and compare the next steps' losses with upstream's.

The model has OLMo 2's block (RMSNorm after attention and MLP, QK-norm, rope_theta 500000), z-loss and the
repetition filter (every fifth instance repeats a 3-token unit 21 times, so upstream and olmo both mask it),
AdamW without decay on embeddings. Upstream runs 6 steps and saves an unsharded checkpoint at step 3;
`olmo resume` continues from that checkpoint to step 6. The first resumed step sees the same weights,
moments, LR and batch, so its loss must agree to rounding; later steps may drift by float rounding.

Outside CI: it needs a checkout of allenai/OLMo (with its olmo/, olmo_data/ and scripts/train.py) and
that package's own dependencies besides torch (e.g. `pip install --no-deps omegaconf
antlr4-python3-runtime==4.9.3 importlib_resources ai2-olmo-core torchmetrics lightning-utilities`).

    python scripts/check_upstream_resume.py --upstream ~/src/OLMo [--keep DIR]

Exits 1 unless the first resumed step's loss agrees within --tolerance (relative, default 1e-6) and every
later one within 100 times that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "olmo_cli" / "data" / "builtin" / "tiny-bpe-4096.json"
SEQ, STEPS, SAVE_AT = 64, 6, 3

# Runs upstream's scripts/train.py with its console metrics printed as JSON lines, at full precision.
UPSTREAM_RUNNER = """
import json, runpy, sys
import olmo.train

def log(self, prefix, metrics):
    row = {"step": self.global_step, **{k: float(v) for k, v in metrics.items()}}
    print("METRICS " + json.dumps(row), flush=True)

olmo.train.Trainer.log_metrics_to_console = log
sys.argv = ["scripts/train.py", sys.argv[1]]
runpy.run_path("scripts/train.py", run_name="__main__")
"""


def write_data(path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(64):
        if k % 5 == 0:  # 21 copies of a period-3 unit: the repetition filter masks it
            rows.append(np.tile(rng.integers(2, 4096, size=3), 22)[:SEQ])
        else:
            start = int(rng.integers(2, 3000))
            rows.append((start + np.arange(SEQ)) % 4096)
    np.concatenate(rows).astype("<u2").tofile(path)


def upstream_config(work: Path) -> dict:
    model = {
        **{"d_model": 64, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 256, "weight_tying": False},
        **{"alibi": False, "rope": True, "rope_theta": 500000, "flash_attention": False},
        **{"attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0},
        **{"include_bias": False, "block_type": "sequential", "activation_type": "swiglu"},
        **{"layer_norm_type": "rms", "layer_norm_with_affine": True, "layer_norm_eps": 1e-6},
        **{
            "bias_for_layer_norm": False,
            "attention_layer_norm": True,
            "attention_layer_norm_with_affine": True,
        },
        **{"norm_after": True, "max_sequence_length": SEQ, "vocab_size": 4096, "embedding_size": 4096},
        **{"eos_token_id": 0, "pad_token_id": 1, "init_device": "cpu", "init_fn": "normal"},
        **{"init_std": 0.02, "init_cutoff_factor": 3},
    }
    return {
        "run_name": "olmo2-upstream-tiny",
        "seed": 6198,
        "model": model,
        "softmax_auxiliary_loss": True,
        "auxiliary_loss_multiplier": 1e-5,
        "optimizer": {
            **{"name": "adamw", "learning_rate": 3e-3, "weight_decay": 0.1, "eps": 1e-8},
            **{"decay_norm_and_bias": True, "decay_embeddings": False, "betas": [0.9, 0.95]},
            "metrics_log_interval": 1,
        },
        "scheduler": {
            **{"name": "cosine_with_warmup", "units": "tokens", "t_warmup": 512, "t_max": 4096},
            **{"alpha_f": 0.1, "warmup_min_lr": 0.0},
        },
        "tokenizer": {"identifier": str(TOKENIZER), "truncate_direction": "right"},
        "save_folder": str(work / "upstream"),
        **{"save_overwrite": True, "save_interval": None, "save_interval_unsharded": SAVE_AT},
        **{"save_num_unsharded_checkpoints_to_keep": -1, "no_pre_train_checkpoint": True},
        **{"max_duration": STEPS, "stop_at": STEPS, "global_train_batch_size": 4},
        **{"device_train_microbatch_size": 2, "precision": "fp32", "distributed_strategy": "single"},
        **{"max_grad_norm": 1.0, "speed_monitor": {"window_size": 1}, "console_log_interval": 1},
        **{"eval_interval": 1000, "evaluators": []},
        "data": {
            **{"pad_direction": "right", "num_workers": 0, "drop_last": True, "memmap_dtype": "uint16"},
            "instance_filter": {
                "repetition_max_period": 13,
                "repetition_min_period": 1,
                "repetition_max_count": 16,
            },
            "paths": [str(work / "tokens.npy")],
        },
    }


def run_upstream(checkout: Path, config: Path) -> dict[int, dict]:
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    paths = [str(checkout), *filter(None, [os.environ.get("PYTHONPATH")])]
    env.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "PYTHONPATH": os.pathsep.join(paths)})
    proc = subprocess.run(
        [sys.executable, "-c", UPSTREAM_RUNNER, str(config)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        sys.exit(f"upstream's trainer failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = [
        json.loads(line[len("METRICS ") :])
        for line in proc.stdout.splitlines()
        if line.startswith("METRICS ")
    ]
    return {row["step"]: row for row in rows}


def run_olmo(run_dir: Path) -> dict[int, dict]:
    checkpoint = run_dir / f"step{SAVE_AT}-unsharded"
    for later in run_dir.glob("step*-unsharded"):
        if later != checkpoint:
            shutil.rmtree(later)
    latest = run_dir / "latest-unsharded"  # upstream's symlink to its last checkpoint
    if latest.is_symlink():
        latest.unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "olmo_cli",
            "resume",
            str(run_dir),
            "--load-path",
            str(checkpoint),
            "--no-wandb",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        sys.exit(f"olmo resume failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of allenai/OLMo")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    if not (args.upstream / "scripts" / "train.py").is_file():
        sys.exit(f"{args.upstream} is not a checkout of allenai/OLMo (no scripts/train.py)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="olmo-upstream-"))
    work.mkdir(parents=True, exist_ok=True)
    write_data(work / "tokens.npy")
    (work / "config.yaml").write_text(yaml.safe_dump(upstream_config(work), sort_keys=False))
    theirs = run_upstream(args.upstream.resolve(), work / "config.yaml")
    ours_dir = work / "olmo"
    shutil.copytree(work / "upstream", ours_dir, symlinks=True, dirs_exist_ok=True)
    ours = run_olmo(ours_dir)
    print(f"{'step':>4}  {'upstream CE':>20}  {'olmo CE':>20}  {'rel diff':>9}  masked (up/olmo)")
    worst_first, worst = 0.0, 0.0
    for step in range(SAVE_AT + 1, STEPS + 1):
        a, b = theirs[step]["train/CrossEntropyLoss"], ours[step]["train/CrossEntropyLoss"]
        rel = abs(a - b) / abs(a)
        masked = (
            theirs[step].get("train/masked_instances_local_rank"),
            ours[step].get("train/masked_instances_local_rank"),
        )
        print(f"{step:>4}  {a:>20.15f}  {b:>20.15f}  {rel:>9.1e}  {masked[0]}/{masked[1]}")
        worst_first = rel if step == SAVE_AT + 1 else worst_first
        worst = max(worst, rel)
    ok = worst_first <= args.tolerance and worst <= 100 * args.tolerance
    print(("agree" if ok else "DISAGREE") + f": first resumed step {worst_first:.1e}, worst {worst:.1e}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
