"""`olmo inspect-batch 0` on a multi-terabyte dataset versus the same command on a tiny one.

The big dataset is made of sparse files (`truncate`: they take no disk space and read as zeros), by
default 1000 files of 2 GiB = 2.1 TB of uint16 tokens, 5.2e8 instances of 2048 tokens, batch size 512.
The anchor is the same command, config and batch size on a 1024-instance dataset, measured in the same
run: the ratio says what the data's size adds to a look at one batch.

Three measurements of the big dataset:
- cold: the first run, which computes the data order (a full-permutation shuffle; see
  olmo_cli/data/order.py) and caches it;
- warm: later runs, which read the cached order (memory-mapped, 512 entries) and 512 instances;
- order file: `--data-order-file` pointing at an existing raw uint32 order, as with a run's
  train_data/global_indices.npy or a published order.
Wall time and peak RSS are per child process (os.wait4). After the cold run, the repetitions of the
anchor, warm and order-file runs are interleaved (a, w, o, w, o, a, ...) so that load from others sharing
the machine hits all alike; the median wall time counts. The last line is the warm/anchor ratio; with
--json that goes to stderr and stdout gets one JSON object (benchmarks/measures.py's `measures`, where
the ratio is anchor/ours: what a look at one batch of the big dataset costs against the tiny one).

    python benchmarks/bench_inspect_batch.py [--files 1000] [--file-gib 2] [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measures import measure, run_benchmark  # noqa: E402

SEQ_LEN, BATCH = 2048, 512


def olmo_command() -> list[str]:
    exe = Path(sys.executable).with_name("olmo")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "olmo_cli"]


def write_config(path: Path, data_paths: list[str]) -> Path:
    config = {
        "model": {
            "d_model": 2048,
            "n_heads": 16,
            "n_layers": 16,
            "max_sequence_length": SEQ_LEN,
            "vocab_size": 50280,
            "embedding_size": 50304,
        },
        "global_train_batch_size": BATCH,
        "data": {"paths": data_paths, "memmap_dtype": "uint16"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process; its stdout is discarded."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*olmo_command(), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen the child is already reaped
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        sys.exit(f"olmo {' '.join(args)} failed with {proc.returncode}:\n{stderr}")
    return wall, usage.ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def report(label: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    wall = statistics.median(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    print(f"{label:<44} wall {wall:7.3f} s (median of {len(runs)})   peak RSS {rss:8.1f} MiB", flush=True)
    return wall, rss


def interleaved(commands: dict[str, list[str]], env: dict[str, str], repeats: int) -> dict[str, list]:
    """Each command `repeats` times, the order rotating each round: (wall, RSS) per run."""
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    labels = list(commands)
    for r in range(repeats):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            runs[label].append(run_measured(commands[label], env))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--file-gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the sparse files (default: tmp)")
    return run_benchmark("inspect_batch", parser, run)


def run(opts: argparse.Namespace) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="olmo-bench-inspect-", dir=opts.dir))
    try:
        file_bytes = int(opts.file_gib * 2**30) // (2 * SEQ_LEN) * (2 * SEQ_LEN)
        big = []
        for i in range(opts.files):
            path = root / "big" / f"part-{i:05d}.npy"
            path.parent.mkdir(exist_ok=True)
            with open(path, "wb") as f:
                f.truncate(file_bytes)  # sparse: no blocks allocated, reads as zeros
            big.append(str(path))
        tiny = root / "tiny.npy"
        np.random.default_rng(0).integers(0, 50000, size=1024 * SEQ_LEN, dtype=np.uint16).tofile(tiny)
        big_cfg = write_config(root / "big.yaml", big)
        tiny_cfg = write_config(root / "tiny.yaml", [str(tiny)])
        total = opts.files * file_bytes
        instances = total // (2 * SEQ_LEN)
        print(
            f"dataset: {opts.files} sparse files, {total / 1e12:.2f} TB, {total // 2:,} tokens, "
            f"{instances:,} instances of {SEQ_LEN}; batch size {BATCH}; "
            f"data order {instances * 4 / 2**30:.2f} GiB"
        )
        env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache")}
        ids = ["inspect-batch", "0", "--format", "ids"]

        report("big, cold (computes + caches the order)", [run_measured([*ids, "-c", str(big_cfg)], env)])
        order_file = next((root / "cache" / "olmo" / "data-order").glob("*.u32"), None)
        if order_file is None:  # small enough not to be cached: write it as a run would
            from olmo_cli.data.order import global_indices, write_order

            order_file = write_order(root / "global_indices.npy", global_indices(instances, seed=6198))
        commands = {
            "anchor: tiny dataset (1024 instances)": [*ids, "-c", str(tiny_cfg)],
            "big, warm (cached order)": [*ids, "-c", str(big_cfg)],
            "big, --data-order-file": [*ids, "-c", str(big_cfg), "--data-order-file", str(order_file)],
        }
        runs = interleaved(commands, env, opts.repeats)
        (anchor_wall, anchor_rss), (warm_wall, warm_rss), _ = (report(k, v) for k, v in runs.items())
        print(f"peak RSS ratio warm/anchor: {warm_rss / anchor_rss:.2f}")
        print(f"wall ratio warm/anchor (multi-TB batch 0 vs tiny batch 0): {warm_wall / anchor_wall:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    anchor, warm, by_file = runs.values()
    big = f"{total / 1e12:.2f} TB"
    return [
        measure(f"inspect-batch 0 wall, {big} {what} vs 1024 instances", "s", [w for w, _ in ours],
                [w for w, _ in anchor], "same command, tiny dataset", higher_is_better=False)
        for what, ours in (("warm", warm), ("--data-order-file", by_file))
    ] + [
        measure(f"inspect-batch 0 peak RSS, {big} warm vs 1024 instances", "MiB", [m for _, m in warm],
                [m for _, m in anchor], "same command, tiny dataset", higher_is_better=False)
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
