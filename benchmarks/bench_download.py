"""Download throughput of `olmo checkpoints download` on loopback, against one plain `requests` stream.

A checkpoint in upstream's unsharded layout (config.yaml, model.safetensors, optim.safetensors,
train.pt; by default 2 GiB in all, model:optim = 1:2 as in the published ones) is served by the tests'
HTTP server (tests/hub/_server.py) in a separate process, from generated data: nothing is held in
memory whole and nothing is stored on the serving side. Measured in the same run, alternating:

- olmo: olmo_cli.hub.download with its defaults (8 connections, 64 MiB ranges), which verifies each
  file's size, fsyncs it and renames it into place;
- anchor: the same files one after another, each as one `requests` stream (1 MiB reads, written to a
  file, fsynced at the end so both sides pay for durability).

Each download goes to a fresh directory under --dir, checked against the source (SHA-256), then
deleted, so the disk holds at most one copy. `--per-connection-mbps` caps every response's rate on
the server, as a CDN does for one connection; unset, the loopback runs as fast as the CPUs allow.
The repetitions alternate which side goes first (olmo, anchor, anchor, olmo, ...), so that load from
others sharing the machine hits both alike. The last line is the olmo/anchor throughput ratio (best of
--repeats; the slowest runs show the spread); with --json that goes to stderr and stdout gets one JSON
object (benchmarks/measures.py's `measures`).

    python benchmarks/bench_download.py [--gib 2] [--repeats 2] [--dir /tmp] [--per-connection-mbps 100]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from measures import measure, run_benchmark, span  # noqa: E402

from olmo_cli.hub.download import DownloadOptions, download, plan_download  # noqa: E402
from olmo_cli.hub.index import IndexEntry  # noqa: E402
from tests._http_server import PatternBlob, serve  # noqa: E402

STEP = 1000
PREFIX = f"ckpt/step{STEP}-unsharded"


def layout(total: int) -> dict[str, int]:
    """File sizes in the proportions of a published checkpoint (optim = 2 x model)."""
    small = {"config.yaml": 9_000, "train.pt": 14_000_000}
    rest = total - sum(small.values())
    return {**small, "model.safetensors": rest // 3, "optim.safetensors": rest - rest // 3}


def _serve(sizes: dict[str, int], rate: float | None, port_out: mp.Queue, stop: mp.Event) -> None:
    with serve() as server:
        for seed, (name, size) in enumerate(sizes.items()):
            server.files[f"{PREFIX}/{name}"] = PatternBlob(size, seed * 7919)
        server.rate = rate
        port_out.put(server.base_url)
        stop.wait()


def expected_digests(sizes: dict[str, int]) -> dict[str, str]:
    out = {}
    for seed, (name, size) in enumerate(sizes.items()):
        blob, digest = PatternBlob(size, seed * 7919), hashlib.sha256()
        for start in range(0, size, 64 << 20):
            digest.update(blob.read(start, min(size, start + (64 << 20))))
        out[name] = digest.hexdigest()
    return out


def check(directory: Path, digests: dict[str, str]) -> None:
    for name, want in digests.items():
        digest = hashlib.sha256()
        with open(directory / name, "rb") as f:
            while block := f.read(64 << 20):
                digest.update(block)
        if digest.hexdigest() != want:
            raise SystemExit(f"{directory / name} differs from the source")


def run_olmo(base_url: str, dest: Path) -> Path:
    options = DownloadOptions()
    entry = IndexEntry(STEP, f"{base_url}/{PREFIX}/", line=2)
    download(plan_download([entry], dest, options), options)
    return dest / f"step{STEP}-unsharded"


def run_anchor(base_url: str, dest: Path, names: list[str]) -> Path:
    import requests

    dest.mkdir(parents=True)
    with requests.Session() as session:
        for name in names:
            with session.get(f"{base_url}/{PREFIX}/{name}", stream=True, timeout=60) as response:
                response.raise_for_status()
                with open(dest / name, "wb") as f:
                    for block in response.iter_content(1 << 20):
                        f.write(block)
                    f.flush()
                    os.fsync(f.fileno())
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gib", type=float, default=2.0, help="checkpoint size in GiB")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--per-connection-mbps", type=float, default=None, help="server cap per response, MB/s"
    )
    return run_benchmark("download", parser, run)


def run(args: argparse.Namespace) -> list[dict]:
    sizes = layout(int(args.gib * 2**30))
    total = sum(sizes.values())
    free = shutil.disk_usage(args.dir).free
    if free < 1.2 * total:
        raise SystemExit(f"{args.dir} has {free / 2**30:.1f} GiB free; need {1.2 * total / 2**30:.1f}")
    names = ", ".join(sizes)
    print(f"checkpoint: {total / 2**30:.2f} GiB in {len(sizes)} files ({names}); CPUs: {os.cpu_count()}")
    print("computing source digests ...", flush=True)
    digests = expected_digests(sizes)

    ctx = mp.get_context("fork")
    port_out, stop = ctx.Queue(), ctx.Event()
    rate = args.per_connection_mbps * 1e6 if args.per_connection_mbps else None
    server = ctx.Process(target=_serve, args=(sizes, rate, port_out, stop), daemon=True)
    server.start()
    base_url = port_out.get(timeout=30)
    cap = f"{args.per_connection_mbps:g} MB/s" if args.per_connection_mbps else "none"
    print(f"server: {base_url} (separate process); per-connection cap: {cap}; writing to {args.dir}")

    runs: dict[str, list[float]] = {"olmo": [], "anchor": []}  # seconds
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.dir))
    try:
        for repeat in range(args.repeats):
            for name in ("olmo", "anchor") if repeat % 2 == 0 else ("anchor", "olmo"):
                dest = work / f"{name}-{repeat}"
                started = time.perf_counter()
                out = run_olmo(base_url, dest) if name == "olmo" else run_anchor(base_url, dest, list(sizes))
                seconds = time.perf_counter() - started
                check(out, digests)
                shutil.rmtree(dest)
                runs[name].append(seconds)
                print(
                    f"  {name:6s} run {repeat + 1}: {seconds:6.2f} s  {total / seconds / 1e6:8.1f} MB/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        stop.set()
        server.join(timeout=10)

    rates = {name: [total / seconds / 1e6 for seconds in values] for name, values in runs.items()}
    for name in ("olmo", "anchor"):
        best = min(runs[name])
        runs_mb_s = span(sorted(rates[name]), ".1f")
        print(f"{name:6s} best: {best:6.2f} s  {total / best / 1e6:8.1f} MB/s  (runs: {runs_mb_s})")
    print(f"olmo/anchor throughput ratio: {min(runs['anchor']) / min(runs['olmo']):.2f}")
    cap = f", {args.per_connection_mbps:g} MB/s per connection" if args.per_connection_mbps else ""
    found = measure(
        f"download {total / 2**30:.2f} GiB on loopback{cap}", "MB/s", rates["olmo"], rates["anchor"],
        "one requests stream per file", statistic="best",
    )  # fmt: skip
    return [found]


if __name__ == "__main__":
    sys.exit(main())
