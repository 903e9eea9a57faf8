"""Benchmark PDD inference (both teachers, fusion, two students, map) against the WideResNet50-2 teacher alone.

Prints the time per image of ``PDD.forward`` and of the frozen WRN50-2 teacher's forward at the same size, and their
ratio, measured side by side in one process (random weights: the cost does not depend on the values). The default
size is the bundle's configured ``image_size`` (``bundles/pdd/configs/inference.json``).

    python benchmarks/bench_pdd.py --threads 2                      # configured size, CPU
    python benchmarks/bench_pdd.py --threads 2 --image-size 256     # the paper's size
    python benchmarks/bench_pdd.py --threads 1 --image-size 256 --vmamba vssm1_tiny   # the d_state 1 teacher
    python benchmarks/bench_selective_scan.py --threads 1           # the selective-scan figures (VMamba core)
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from medad_monai.benchmarking import add_runtime_args, runtime_device, time_calls
from medad_monai.networks.pdd import PDD, VMAMBA_TEACHERS
from medad_monai.networks.vmamba import set_compiled_scan

REPO = Path(__file__).resolve().parents[1]


def _configured(key: str) -> object:
    return json.loads((REPO / "bundles" / "pdd" / "configs" / "inference.json").read_text())[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=int(_configured("image_size")))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--vmamba",
        choices=VMAMBA_TEACHERS,
        default=str(_configured("vmamba")),
        help="VMamba teacher (default: the bundle's; vssm1_tiny is the d_state 1 VMamba-T v2)",
    )
    add_runtime_args(parser)
    args = parser.parse_args()
    device = runtime_device(args)
    torch.manual_seed(0)
    model = PDD(
        image_size=args.image_size,
        wrn_weights="random",
        vmamba_weights="random",
        vmamba=args.vmamba,
        decoder_blocks=tuple(_configured("decoder_blocks")),
        decoder_width=int(_configured("decoder_width")),
    ).to(device)
    model.eval()
    x = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    x_norm = (x - model.mean) / model.std

    def with_scan(compiled: bool, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            set_compiled_scan(model, compiled)
            return fn()

        return call

    calls = {
        "wrn": lambda: model.wrn(x_norm),
        "vmamba": with_scan(True, lambda: model.vmamba(x_norm)),
        "pdd": with_scan(True, lambda: model(x)),
    }
    if device.type == "cpu":  # the PyTorch scans, timed in the same rounds (CUDA never runs the compiled loops)
        calls["vmamba_torch"] = with_scan(False, lambda: model.vmamba(x_norm))
        calls["pdd_torch"] = with_scan(False, lambda: model(x))
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for fn in calls.values():  # warm-up (and numba's compilation) outside the timed rounds
            time_calls(fn, 0, args.warmup, device)
        for _ in range(args.repeats):  # round-robin: a slow spell of a shared machine hits every variant alike
            for name, fn in calls.items():
                times[name] += time_calls(fn, 1, 0, device)
    ms = {name: 1000 * statistics.median(t) / args.batch for name, t in times.items()}
    wrn_ms = ms["wrn"]
    print(f"input {args.batch}x3x{args.image_size}x{args.image_size}, median of {args.repeats} rounds, per image:")
    print(f"  WRN50-2 teacher alone  : {wrn_ms:9.1f} ms")
    print(f"  VMamba-Tiny teacher    : {ms['vmamba']:9.1f} ms  ({args.vmamba})")
    print(f"  full PDD (map)         : {ms['pdd']:9.1f} ms")
    print(f"  ratio VMamba / WRN50-2 : x{ms['vmamba'] / wrn_ms:.2f}")
    print(f"  ratio PDD / WRN50-2    : x{ms['pdd'] / wrn_ms:.2f}")
    if "vmamba_torch" in ms:
        print("with the PyTorch scans only (no numba loops), same rounds:")
        print(f"  VMamba-Tiny teacher    : {ms['vmamba_torch']:9.1f} ms  (x{ms['vmamba_torch'] / wrn_ms:.2f} WRN50-2)")
        print(f"  full PDD (map)         : {ms['pdd_torch']:9.1f} ms  (x{ms['pdd_torch'] / wrn_ms:.2f} WRN50-2)")
        print(
            f"  compiled scans speed VMamba x{ms['vmamba_torch'] / ms['vmamba']:.2f}, "
            f"PDD x{ms['pdd_torch'] / ms['pdd']:.2f}"
        )


if __name__ == "__main__":
    main()
