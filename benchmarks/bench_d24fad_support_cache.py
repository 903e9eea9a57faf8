"""Benchmark: D²4FAD inference with cached support features vs recomputing the support set per query.

The official D²4FAD evaluation (``test.py::evaluation``) pushes the K support images through the teacher and the
student again for every query (the support set is repeated over the batch). ``D24FAD.set_support`` computes the
support student features and learn-to-weight keys once and stores them as buffers, so ``D24FAD.forward`` only
processes the query. This script times both paths per image at K = 2, 4, 8 (random-init teacher: timings do not
depend on the weights), and the support set's own pass as one K-image batch (``set_support``): recomputing should
cost what it adds and no more, ``recompute / cached = 1 + t(K-image batch) / t(cached query)``, which the last
columns compare (issue 15: within 5%).

Example::

    python benchmarks/bench_d24fad_support_cache.py                 # CPU, 128 px, K = 2 4 8, batch 1
    python benchmarks/bench_d24fad_support_cache.py --device cuda --batch-size 16 --repeats 20
"""

import argparse
import statistics

import torch

from medad_monai.benchmarking import add_runtime_args, runtime_device, time_calls
from medad_monai.networks.d24fad import D24FAD


def _bench_one(k: int, args: argparse.Namespace, device: torch.device) -> tuple[int, float, float, float, float]:
    """Time cached vs recomputed inference for one support size ``k``; returns one table row."""
    size, b = args.image_size, args.batch_size
    torch.manual_seed(0)
    model = D24FAD(teacher_weights="random", image_size=size, num_support=k).to(device).eval()
    support = torch.rand(k, 3, size, size, device=device)
    query = torch.rand(b, 3, size, size, device=device)
    # per-query: the support set repeated for every query of the batch, exactly what the official test.py computes
    per_query = support.unsqueeze(0).expand(b, -1, -1, -1, -1)
    recompute_support = per_query if args.support_mode == "per-query" else support
    calls = {
        "set_support": lambda: model.set_support(support),  # the K supports as one batch (stores the same buffers)
        "cached": lambda: model(query),
        "recomputed": lambda: model.forward_with_support(query, recompute_support),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for fn in calls.values():
            time_calls(fn, 0, args.warmup, device)
        for _ in range(args.repeats):  # round-robin, so that a slow spell of a shared machine hits all three alike
            for name, fn in calls.items():
                times[name] += time_calls(fn, 1, 0, device)
        max_diff = (model(query) - model.forward_with_support(query, recompute_support)).abs().max().item()
    c_ms = statistics.median(times["cached"]) / b * 1e3
    r_ms = statistics.median(times["recomputed"]) / b * 1e3
    s_ms = statistics.median(times["set_support"]) * 1e3
    return k, c_ms, r_ms, s_ms, max_diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8], help="support set sizes K")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1, help="query images per call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration")
    add_runtime_args(parser)
    parser.add_argument(
        "--support-mode",
        choices=["per-query", "shared"],
        default="per-query",
        help="recompute path: 'per-query' repeats the K supports for every query as the official test.py "
        "(B*K support passes per call), 'shared' computes them once per call (K passes); same for batch 1",
    )
    args = parser.parse_args()

    device = runtime_device(args)
    print(
        f"image {args.image_size}px | batch {args.batch_size} | "
        f"repeats {args.repeats} (+{args.warmup} warm-up) | support mode {args.support_mode}"
    )
    rows = [_bench_one(k, args, device) for k in args.shots]
    print()
    print(
        "| K | cached forward (ms/img) | recompute support (ms/img) | set_support, K-image batch (ms) "
        "| recompute / cached | 1 + batch / cached | measured / expected |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, c_ms, r_ms, s_ms, _ in rows:
        # per query the official path adds the support pass once (batch 1) or once per query (per-query mode)
        expected = 1.0 + s_ms * (1 if args.support_mode == "per-query" else 1 / args.batch_size) / c_ms
        print(
            f"| {k} | {c_ms:.1f} | {r_ms:.1f} | {s_ms:.1f} | {r_ms / c_ms:.2f}x | {expected:.2f}x "
            f"| {r_ms / c_ms / expected:.3f} |"
        )
    print()
    print("max |cached - recomputed| map difference per K: " + ", ".join(f"K={r[0]}: {r[4]:.2e}" for r in rows))
    print("times are medians over the timed calls, divided by the batch size")


if __name__ == "__main__":
    main()
