"""Throughput and MFU: a windowed speed monitor, and the peak FLOP/s of the device it is measured against.

The monitor follows upstream: tokens and batches per second per device, over the
last `window_size` batches, leaving out the first batch after a start or a reset (it pays for warm-up,
compilation, or the checkpoint/eval that preceded it). MFU = achieved model FLOP/s / the device's peak.

Peaks: a table of dense (no-sparsity) figures from the vendors' data sheets for known GPUs; on a CPU,
or a GPU not in the table, a short measured matmul peak, cached per device, thread count and dtype.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from olmo_cli.atomic import atomic_write_text
from olmo_cli.config.precision import compute_dtype
from olmo_cli.config.schema import TrainConfig

__all__ = [
    "GPU_PEAKS",
    "SpeedMetrics",
    "SpeedMonitor",
    "device_peak_flops",
    "gpu_peak_flops",
    "measure_matmul_peak",
    "run_peak_flops",
]


@dataclass(frozen=True)
class SpeedMetrics:
    tokens_per_second: float  # per device
    batches_per_second: float
    mfu: float | None  # None without a known peak

    def as_metrics(self) -> dict[str, float]:
        """Upstream's metric names, plus `throughput/device/mfu`."""
        out = {
            "throughput/device/tokens_per_second": self.tokens_per_second,
            "throughput/device/batches_per_second": self.batches_per_second,
        }
        if self.mfu is not None:
            out["throughput/device/mfu"] = self.mfu
        return out


class SpeedMonitor:
    """Feed it each step's tokens (on this device) and seconds; it answers for the last window."""

    def __init__(self, window_size: int, flops_per_token: float, peak_flops: float | None) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self._window: deque[tuple[int, float]] = deque(maxlen=window_size)
        self._skip_next = True

    def reset(self) -> None:
        """Forget the window and skip the next batch again (call after a checkpoint or an eval)."""
        self._window.clear()
        self._skip_next = True

    def update(self, tokens: int, seconds: float) -> SpeedMetrics | None:
        """Record one step; returns the window's speed, or None while the window is still empty."""
        if self._skip_next:
            self._skip_next = False
        else:
            self._window.append((tokens, seconds))
        return self.metrics()

    def metrics(self) -> SpeedMetrics | None:
        elapsed = sum(s for _, s in self._window)
        if not self._window or elapsed <= 0:
            return None
        tokens_per_second = sum(t for t, _ in self._window) / elapsed
        mfu = None
        if self.peak_flops:
            mfu = tokens_per_second * self.flops_per_token / self.peak_flops
        return SpeedMetrics(tokens_per_second, len(self._window) / elapsed, mfu)


# Dense tensor-core peaks in TFLOP/s: (bf16/fp16, tf32), SXM/OAM parts unless the name says otherwise.
# Matched against torch.cuda.get_device_name() in this order, so specific names come before general ones.
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("GH200", 989.0, 494.0),
    ("H200", 989.0, 494.0),
    ("H100 PCIe", 756.0, 378.0),
    ("H100 NVL", 835.0, 418.0),
    ("H100", 989.0, 494.0),
    ("H800", 989.0, 494.0),
    ("B200", 2250.0, 1100.0),
    ("A100", 312.0, 156.0),
    ("A800", 312.0, 156.0),
    ("L40S", 362.0, 183.0),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 60.0),
    ("A10G", 125.0, 62.5),  # AWS's A10 variant, as NVIDIA lists it for g5 instances
    ("A10", 125.0, 62.5),
    ("6000 Ada", 364.0, 182.0),  # before "A6000": the RTX 6000 Ada is another chip
    ("A6000", 155.0, 77.4),  # RTX A6000 (Ampere)
    ("4090", 165.0, 82.6),
    ("3090", 71.0, 35.6),
    ("V100", 125.0, 15.7),  # fp16 tensor cores; no tf32 (fp32 peak given)
    ("T4", 65.0, 8.1),
    ("MI300X", 1307.0, 654.0),
    ("MI250X", 383.0, 95.7),
)


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    """The table's peak (FLOP/s) for a GPU name, or None when the name is not known."""
    low_precision = dtype in (torch.bfloat16, torch.float16)
    for key, half, tf32 in GPU_PEAKS:
        if key.lower() in name.lower():
            return (half if low_precision else tf32) * 1e12
    return None


def device_peak_flops(device: torch.device | str, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one device for matmuls in `dtype`, where the figure comes from).

    For fp32 on a GPU the TF32 tensor-core peak is given (what fp32 matmuls run at when TF32 is allowed,
    and the usual MFU reference); a CPU's peak is measured for the current thread count.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name, dtype)
        if peak is not None:
            return peak, f"{name}: data-sheet dense {_dtype_name(dtype)} peak"
        peak = measure_matmul_peak(device, dtype)
        return peak, f"{name}: measured {_dtype_name(dtype)} matmul peak (not in the table)"
    threads = torch.get_num_threads()
    peak = measure_matmul_peak(device, dtype)
    return peak, f"{_cpu_model()}, {threads} threads: measured {_dtype_name(dtype)} matmul peak"


def run_peak_flops(cfg: TrainConfig, device: torch.device | str | None) -> tuple[float | None, str | None]:
    """(one device's peak FLOP/s for `cfg`'s run, where the figure comes from), as training measures its
    MFU and the dry run its time: `speed_monitor.gpu_flops_available` when the config gives it, else the
    peak of `device` in the run's compute dtype. `device` None (one this machine does not have) and no
    configured figure: (None, None)."""
    if cfg.speed_monitor.gpu_flops_available is not None:
        return cfg.speed_monitor.gpu_flops_available, "speed_monitor.gpu_flops_available"
    if device is None:
        return None, None
    return device_peak_flops(device, compute_dtype(cfg))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "olmo" / "cpu-peak.json"


def measure_matmul_peak(
    device: torch.device | str, dtype: torch.dtype, *, budget_seconds: float = 1.0, refresh: bool = False
) -> float:
    """The best FLOP/s of square matmuls in `dtype` on `device`, timed for about `budget_seconds`.

    On a CPU the result is cached in $XDG_CACHE_HOME/olmo/cpu-peak.json per CPU model, thread count and
    dtype, so a later run answers at once (a GPU measures again: it is quick there and rare). Other work
    on the same cores lowers a measurement, so `refresh` measures again and the cache keeps the highest
    figure seen.
    """
    device = torch.device(device)
    key = None
    if device.type == "cpu":
        key = f"{_cpu_model()}|threads={torch.get_num_threads()}|{_dtype_name(dtype)}"
        cached = _read_cache().get(key)
        if not refresh and isinstance(cached, (int, float)) and cached > 0:
            return float(cached)
    peak = _time_matmuls(device, dtype, budget_seconds)
    if key is not None:
        peak = _write_cache(key, peak)
    return peak


def _time_matmuls(device: torch.device, dtype: torch.dtype, budget: float) -> float:
    """Grows the matrix size while the next size still fits the budget (bigger products run closer to
    peak), then spends the rest of the budget on repeats; the best rate seen is the peak."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator(device=device).manual_seed(0)
    deadline = time.perf_counter() + budget
    n, best = 256, 0.0
    while True:
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)
        torch.mm(a, b)  # warm-up: kernel choice, packing buffers
        sync()
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            seconds = time.perf_counter() - start
            best = max(best, 2 * n**3 / seconds)
        # Twice the size costs 8x per product; growing needs room for four of them.
        if n >= 4096 or 32 * seconds > deadline - time.perf_counter():
            break
        n *= 2
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def _read_cache() -> dict[str, object]:
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, peak: float) -> float:
    """Keeps the higher of `peak` and the cached figure, and returns it. Read-modify-write through an
    atomic rename: a racing writer may drop an entry, never corrupt the file."""
    data = _read_cache()
    old = data.get(key)
    if isinstance(old, (int, float)) and old > peak:
        return float(old)
    data[key] = peak
    try:
        atomic_write_text(_cache_file(), json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError:  # a read-only home still gets its number, measured again next time
        pass
    return peak
