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
from pathlib import Path

import torch

from medad_monai.benchmarking import add_runtime_args, runtime_device, time_calls
from medad_monai.networks.pdd import PDD, VMAMBA_TEACHERS

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

    with torch.no_grad():
        pdd_t = time_calls(lambda: model(x), args.repeats, args.warmup, device)
        wrn_t = time_calls(lambda: model.wrn(x_norm), args.repeats, args.warmup, device)
        vm_t = time_calls(lambda: model.vmamba(x_norm), args.repeats, args.warmup, device)
    per = args.batch
    pdd_ms, wrn_ms, vm_ms = (1000 * statistics.median(t) / per for t in (pdd_t, wrn_t, vm_t))
    print(f"input {args.batch}x3x{args.image_size}x{args.image_size}, median of {args.repeats} runs, per image:")
    print(f"  WRN50-2 teacher alone  : {wrn_ms:9.1f} ms")
    print(f"  VMamba-Tiny teacher    : {vm_ms:9.1f} ms  ({args.vmamba})")
    print(f"  full PDD (map)         : {pdd_ms:9.1f} ms")
    print(f"  ratio VMamba / WRN50-2 : x{vm_ms / wrn_ms:.2f}")
    print(f"  ratio PDD / WRN50-2    : x{pdd_ms / wrn_ms:.2f}")


if __name__ == "__main__":
    main()
