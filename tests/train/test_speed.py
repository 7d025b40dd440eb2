"""The speed monitor's arithmetic with injected step times, the GPU peak table, and the measured,
cached CPU matmul peak."""

from __future__ import annotations

import json

import pytest
import torch

from olmo_cli.train import speed
from olmo_cli.train.speed import SpeedMonitor, device_peak_flops, gpu_peak_flops, measure_matmul_peak


def test_first_batch_is_left_out_and_the_window_slides():
    monitor = SpeedMonitor(window_size=3, flops_per_token=100.0, peak_flops=1e6)
    assert monitor.update(1000, 10.0) is None  # the first batch: warm-up, not counted
    m = monitor.update(1000, 1.0)
    assert m is not None
    assert m.tokens_per_second == pytest.approx(1000.0)
    assert m.batches_per_second == pytest.approx(1.0)
    assert m.mfu == pytest.approx(1000.0 * 100.0 / 1e6)
    monitor.update(2000, 1.0)
    m = monitor.update(3000, 2.0)  # window: (1000, 1), (2000, 1), (3000, 2)
    assert m.tokens_per_second == pytest.approx(6000 / 4)
    assert m.batches_per_second == pytest.approx(3 / 4)
    m = monitor.update(500, 0.5)  # (1000, 1) falls out
    assert m.tokens_per_second == pytest.approx(5500 / 3.5)
    assert m.batches_per_second == pytest.approx(3 / 3.5)
    assert m.mfu == pytest.approx(5500 / 3.5 * 100 / 1e6)


def test_reset_skips_the_next_batch_again():
    monitor = SpeedMonitor(window_size=10, flops_per_token=1.0, peak_flops=None)
    monitor.update(10, 1.0)
    monitor.update(10, 1.0)
    monitor.reset()  # e.g. after a checkpoint: the next step pays for it
    assert monitor.update(10, 100.0) is None
    m = monitor.update(30, 1.0)
    assert m.tokens_per_second == pytest.approx(30.0)
    assert m.mfu is None  # no peak known
    assert set(m.as_metrics()) == {
        "throughput/device/tokens_per_second",
        "throughput/device/batches_per_second",
    }


def test_metric_names_include_mfu_when_known():
    monitor = SpeedMonitor(window_size=2, flops_per_token=6.0, peak_flops=60.0)
    monitor.update(1, 1.0)
    metrics = monitor.update(5, 1.0).as_metrics()
    assert metrics["throughput/device/mfu"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "dtype", "tflops"),
    [
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312),
        ("NVIDIA A100-PCIE-40GB", torch.bfloat16, 312),
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756),
        ("NVIDIA H100 NVL", torch.float16, 835),
        ("NVIDIA H200", torch.bfloat16, 989),
        ("NVIDIA GH200 480GB", torch.bfloat16, 989),
        ("NVIDIA L40S", torch.bfloat16, 362),
        ("NVIDIA L4", torch.bfloat16, 121),
        ("NVIDIA A10G", torch.bfloat16, 125),
        ("NVIDIA A100-SXM4-40GB", torch.float32, 156),  # tf32
    ],
)
def test_gpu_table(name, dtype, tflops):
    assert gpu_peak_flops(name, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_gpu_is_not_guessed():
    assert gpu_peak_flops("Some Future Accelerator", torch.bfloat16) is None


def test_cpu_peak_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    peak, source = device_peak_flops(torch.device("cpu"), torch.float32)
    assert peak > 1e8  # any CPU manages 0.1 GFLOP/s
    assert "measured" in source and f"{torch.get_num_threads()} threads" in source
    cache = json.loads((tmp_path / "olmo" / "cpu-peak.json").read_text())
    assert list(cache.values()) == [peak]

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(speed, "_time_matmuls", no_timing)
    assert device_peak_flops("cpu", torch.float32)[0] == peak


def test_refresh_keeps_the_highest_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rates = iter([5e9, 2e9, 8e9])
    monkeypatch.setattr(speed, "_time_matmuls", lambda *a: next(rates))
    assert measure_matmul_peak("cpu", torch.bfloat16) == 5e9
    assert measure_matmul_peak("cpu", torch.bfloat16, refresh=True) == 5e9  # 2e9: a busy machine
    assert measure_matmul_peak("cpu", torch.bfloat16, refresh=True) == 8e9
    assert measure_matmul_peak("cpu", torch.bfloat16) == 8e9


def test_measurement_is_quick_and_positive():
    import time

    start = time.perf_counter()
    rate = speed._time_matmuls(torch.device("cpu"), torch.bfloat16, 0.3)
    assert rate > 1e8
    assert time.perf_counter() - start < 3.0
