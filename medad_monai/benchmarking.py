"""Timing helpers shared by the scripts in ``benchmarks/`` (ratios are always measured side by side in one run)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["time_calls"]


def time_calls(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times
