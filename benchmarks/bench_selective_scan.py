"""Benchmark the vectorised selective scan against the sequential reference, plus a VMamba-T forward pass.

Default sizes are those of VMamba-T's first stage on a 256 px image (Liu et al., "VMamba: Visual State Space
Model", NeurIPS 2024): L = 64 * 64 = 4096, d_inner = 96, K = 4 scan routes, d_state = 1, batch 1.

    python benchmarks/bench_selective_scan.py                  # CPU, default sizes, < 2 min on 2 cores
    python benchmarks/bench_selective_scan.py --sweep 1 2 4 8 16 64 --device cuda
    # the original VMamba-T (v0, PDD's teacher): d_state 16, d_inner 192; block-wise scan (auto, 64), compiled loop
    python benchmarks/bench_selective_scan.py --d-inner 192 --d-state 16 --sweep 0 64 --model v0 --threads 1

With d_state 1 the sizes in --chunk-size / --sweep are chunk lengths of the closed-form (PyTorch) scan, and the
compiled recurrence with its backward pass (numba; what the network runs on CPU) is timed too; with a larger d_state
they are block lengths of the block-wise scan (0: automatic), what the network runs when it is trained. On CPU with
numba the forward-only compiled loop (what a frozen network runs: PDD's teacher) is timed for every d_state, and the
VMamba-T forward with and without the compiled scans.
"""

import argparse
import math
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medad_monai.benchmarking import add_runtime_args, runtime_device, time_calls
from medad_monai.networks.compiled_scan import fast_softplus_array
from medad_monai.networks.selective_scan import (
    DEFAULT_CHUNK_SIZE,
    HAS_NUMBA,
    selective_scan_blockwise,
    selective_scan_chunked,
    selective_scan_compiled,
    selective_scan_ref,
)
from medad_monai.networks.vmamba import set_compiled_scan, vanilla_vmamba_tiny, vmamba_tiny


def _fmt(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:8.2f} ms  (min {min(times) * 1e3:.2f}, n={len(times)})"


def _time_scans(scans: dict[str, Callable[[], torch.Tensor]], ref_out: torch.Tensor, ref_med: float, repeats: int):
    """Time the scans round-robin (one call of each in turn, so that a slow spell of a shared machine hits them all
    alike); print each median, its speed-up over the sequential reference and its largest deviation from it."""
    device = ref_out.device
    errors = {label: (fn() - ref_out).abs().max().item() for label, fn in scans.items()}  # also the warm-up call
    times: dict[str, list[float]] = {label: [] for label in scans}
    for _ in range(repeats):
        for label, fn in scans.items():
            times[label] += time_calls(fn, 1, 0, device)
    width = max(len(label) for label in scans)
    for label, t in times.items():
        speedup = ref_med / statistics.median(t)
        print(f"  {label:<{width}}: {_fmt(t)}  speed-up x{speedup:.1f}  max|diff| {errors[label]:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096, help="sequence length L (H*W of the stage)")
    parser.add_argument("--d-inner", type=int, default=96, help="channels per scan route")
    parser.add_argument("--k", type=int, default=4, help="number of scan routes (groups of B/C)")
    parser.add_argument("--d-state", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--chunk-size", type=int, default=None, help=f"first size timed (default {DEFAULT_CHUNK_SIZE}; block-wise: 0)"
    )
    parser.add_argument("--sweep", type=int, nargs="*", default=[], help="extra chunk sizes to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the vectorised scan")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the sequential reference")
    parser.add_argument("--image-size", type=int, default=256, help="VMamba-T input size; 0 skips the model")
    parser.add_argument("--model-repeats", type=int, default=2)
    parser.add_argument("--model", choices=["v05", "v0"], default="v05", help="vmamba_tiny or vanilla_vmamba_tiny")
    parser.add_argument(
        "--decays",
        choices=["vmamba-init", "strong"],
        default="vmamba-init",
        help="vmamba-init: A = -exp(A_logs) and delta = softplus(dt + dt_bias) as VMamba initialises them (per-step "
        "decays exp(-0.001)..exp(-0.1) and a little); strong: A = -exp(N(0,1)), dt_bias ~ N(0,1), per-step "
        "log-decays down to ~-60 (the scan then runs most chunks step by step)",
    )
    add_runtime_args(parser)
    args = parser.parse_args()
    device = runtime_device(args)
    torch.manual_seed(0)

    kd = args.k * args.d_inner
    u = torch.randn(args.batch, kd, args.length, device=device)
    B = torch.randn(args.batch, args.k, args.d_state, args.length, device=device)
    C = torch.randn_like(B)
    D = torch.randn(kd, device=device)
    if args.decays == "strong":
        delta = 0.5 * torch.randn(args.batch, kd, args.length, device=device)
        A = -torch.exp(torch.randn(kd, args.d_state, device=device))
        delta_bias = torch.randn(kd, device=device)
    else:  # VMamba's SS2D initialisation: A_logs = log(1..N), dt ~ logU(0.001, 0.1), dt_bias = softplus^-1(dt)
        delta = 0.1 * torch.randn(args.batch, kd, args.length, device=device)
        A = -torch.arange(1, args.d_state + 1, device=device, dtype=torch.float32).repeat(kd, 1)
        dt = torch.exp(torch.empty(kd, device=device).uniform_(math.log(1e-3), math.log(0.1)))
        delta_bias = dt + torch.log(-torch.expm1(-dt))
    scan_args = (u, delta, A, B, C, D, delta_bias, True)
    print(
        f"scan: batch {args.batch}, K*D {args.k}x{args.d_inner}, d_state {args.d_state}, L {args.length}, "
        f"decays {args.decays}"
    )

    with torch.no_grad():
        ref_out = selective_scan_ref(*scan_args)
        ref_times = time_calls(lambda: selective_scan_ref(*scan_args), args.ref_repeats, 0, device)
        print(f"  sequential reference      : {_fmt(ref_times)}")
        ref_med = statistics.median(ref_times)
        if args.d_state == 1:
            scan, size_arg, label = selective_scan_chunked, "chunk_size", "closed form (PyTorch), chunk_size"
        else:
            scan, size_arg, label = selective_scan_blockwise, "block_size", "block-wise, block_size"
        first = args.chunk_size if args.chunk_size is not None else (DEFAULT_CHUNK_SIZE if args.d_state == 1 else 0)
        scans = {
            f"{label}={size}": (lambda n=size: scan(*scan_args, **{size_arg: n}))
            for size in [first] + [c for c in args.sweep if c != first]
        }
        on_cpu = device.type == "cpu"
        if args.d_state == 1 and HAS_NUMBA and on_cpu:
            scans["compiled recurrence (numba, with backward)"] = lambda: selective_scan_chunked(
                *scan_args, use_compiled=True
            )
        if HAS_NUMBA and on_cpu:  # what a frozen network (PDD's teacher) runs on CPU for d_state > 1
            scans["compiled loop (numba, forward only)"] = lambda: selective_scan_compiled(*scan_args)
        if not HAS_NUMBA:
            print("  compiled loops (numba): not timed, numba is not installed")
        _time_scans(scans, ref_out, ref_med, args.repeats)

        # the scan's delta = softplus(delta + bias): torch's kernel against the where/log1p/exp form (equal to
        # F.softplus's threshold-20 definition), which was reported 2x faster on another build
        x = delta + delta_bias[:, None]

        def where_softplus() -> torch.Tensor:
            return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))

        fast = (where_softplus() - F.softplus(x)).abs().max().item()
        t_torch = time_calls(lambda: F.softplus(x), args.repeats * 4, 1, device)
        t_where = time_calls(where_softplus, args.repeats * 4, 1, device)
        print(
            f"  softplus F.softplus       : {_fmt(t_torch)}\n  softplus where/log1p/exp  : {_fmt(t_where)}  "
            f"F.softplus x{statistics.median(t_where) / statistics.median(t_torch):.2f} faster, max|diff| {fast:.1e}"
        )
        if HAS_NUMBA and on_cpu:  # the arithmetic softplus inside the compiled loop, over the same tensor
            ours = (fast_softplus_array(x) - F.softplus(x)).abs().max().item()
            t_ours = time_calls(lambda: fast_softplus_array(x), args.repeats * 4, 1, device)
            print(
                f"  softplus compiled (numba) : {_fmt(t_ours)}  "
                f"x{statistics.median(t_torch) / statistics.median(t_ours):.2f} faster than F.softplus, "
                f"max|diff| {ours:.1e}"
            )

        if args.image_size > 0:
            build = vmamba_tiny if args.model == "v05" else vanilla_vmamba_tiny
            model = build(chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE).to(device).eval()
            x = torch.randn(1, 3, args.image_size, args.image_size, device=device)
            times = time_calls(lambda: model(x), args.model_repeats, 1, device)
            print(f"VSSM-Tiny ({args.model}) forward, 1x3x{args.image_size}x{args.image_size}: {_fmt(times)}")
            if HAS_NUMBA and on_cpu:
                set_compiled_scan(model, False)
                plain = time_calls(lambda: model(x), args.model_repeats, 1, device)
                print(
                    f"  the same with the PyTorch scans only: {_fmt(plain)}  "
                    f"(compiled x{statistics.median(plain) / statistics.median(times):.2f} faster)"
                )


if __name__ == "__main__":
    main()
