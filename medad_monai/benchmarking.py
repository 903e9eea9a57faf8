"""Timing helpers shared by the scripts in ``benchmarks/`` (ratios are always measured side by side in one run)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

__all__ = ["add_runtime_args", "runtime_device", "time_calls"]


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--threads`` (torch CPU threads; 0 = torch default) and ``--device``, as every benchmark takes them."""
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--device", default="cpu")


def runtime_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, print the machine (torch, CPU, threads, device, load average) and return the device.

    The load average is printed because side-by-side ratios are only trustworthy on a machine that is not
    oversubscribed; a note says so when it is."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__} | {platform.processor() or platform.machine()} | device {device} | "
        f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | load avg {load:.1f}"
    )
    if device.type == "cpu" and load > (os.cpu_count() or 1):
        # multi-threaded ops then wait on descheduled OpenMP peers
        print("note: the CPU is oversubscribed; timings are unreliable, --threads 1 is less affected")
    return device


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
