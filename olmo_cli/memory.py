"""How much memory a device offers a process, and sizes said the way people read them. Used to refuse,
before any work, what cannot fit (a model or KV cache of impossible size) with one clear message."""

from __future__ import annotations

import os

import torch

__all__ = ["device_memory", "human_bytes"]


def device_memory(device: torch.device, processes_here: int = 1) -> int | None:
    """Bytes one process may use: the GPU's memory, or this machine's RAM shared by its processes;
    None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type != "cpu":
        return None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return ram // max(processes_here, 1)


def human_bytes(n: int) -> str:
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"
