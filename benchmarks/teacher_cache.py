"""Training epochs with and without the frozen-teacher feature cache, side by side (issue target: epoch 2+ >= 1.3x).

Each method trains for two epochs over the same images twice: once as the bundles do by default (teachers run on
every batch) and once with ``teacher_cache`` (float16 features, ``medad_monai/networks/feature_cache.py``). Epoch 1
of the cached run fills the cache (it costs the hashing and copies on top); epochs after it read the features. The
training step is the bundles' own: the network's training outputs, the bundle's loss, backward and Adam.

    python benchmarks/teacher_cache.py --threads 2
    python benchmarks/teacher_cache.py --threads 2 --image_size 256 --images 16   # the papers' input size

Prints each epoch's seconds, the ratio uncached/cached for the last epoch, and the largest relative difference of
the last epoch's losses between the two runs: with float16 storage the runs see slightly different teacher
features from the first repeated image on, and, as for any perturbation, the training trajectories then drift
apart; ``--cache_dtype float32`` shows the cache itself changes nothing beyond the order of float operations.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from medad_monai.benchmarking import add_runtime_args, runtime_device
from medad_monai.losses.d24fad import D24FADLoss
from medad_monai.losses.pdd import PDDLoss
from medad_monai.networks.d24fad import D24FAD
from medad_monai.networks.feature_cache import FeatureCache
from medad_monai.networks.pdd import PDD


def _epochs(
    build: Callable[[], nn.Module],
    step: Callable[[nn.Module, int], torch.Tensor],
    steps: int,
    cache_dtype: torch.dtype | None,
    epochs: int,
) -> tuple[list[float], list[float]]:
    """Seconds per epoch and the losses of the last epoch, from the same seed."""
    torch.manual_seed(0)
    net = build().train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    net.teacher_cache = FeatureCache(dtype=cache_dtype) if cache_dtype is not None else None
    seconds, losses = [], []
    for _ in range(epochs):
        start, losses = time.perf_counter(), []
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = step(net, i)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        seconds.append(time.perf_counter() - start)
    net.teacher_cache = None
    return seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=64, help="the bundles' default (papers: 256)")
    parser.add_argument("--images", type=int, default=32, help="training images (one epoch = images / batch)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache_dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    add_runtime_args(parser)
    args = parser.parse_args()
    runtime_device(args)
    size, bs = args.image_size, args.batch_size
    steps = max(1, args.images // bs)
    torch.manual_seed(0)
    images = torch.rand(steps * bs, 3, size, size)

    pdd_loss = PDDLoss()

    def pdd_step(net: nn.Module, i: int) -> torch.Tensor:
        return pdd_loss(net.training_outputs(images[i * bs : (i + 1) * bs]))

    # D²4FAD: each query comes with K = 2 support images drawn from the same pool (fixed episodes, as with
    # resample_support off); the cache keys images, so a support image seen as a query is a hit too
    k = 2
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1))
    d24_loss = D24FADLoss(tsd_weight=0.1)

    def d24_step(net: nn.Module, i: int) -> torch.Tensor:
        query = images[i * bs : (i + 1) * bs]
        picks = order[(torch.arange(bs * k) + i * bs * k) % images.shape[0]]
        return d24_loss(net.episode_outputs(query, images[picks].view(bs, k, 3, size, size)))

    methods = {
        "PDD": (lambda: PDD(image_size=size, wrn_weights="random", vmamba_weights="random"), pdd_step),
        "D24FAD": (lambda: D24FAD(teacher_weights="random", image_size=size, num_support=k), d24_step),
    }
    print(f"{steps} steps of {bs} images at {size} px per epoch, {args.epochs} epochs")
    for name, (build, step) in methods.items():
        dtype = getattr(torch, args.cache_dtype)
        plain, plain_losses = _epochs(build, step, steps, None, args.epochs)
        cached, cached_losses = _epochs(build, step, steps, dtype, args.epochs)
        diff = max(abs(a - b) / abs(a) for a, b in zip(plain_losses, cached_losses))
        print(
            f"{name}: epoch seconds uncached {', '.join(f'{s:.2f}' for s in plain)} | cached "
            f"{', '.join(f'{s:.2f}' for s in cached)} | epoch {args.epochs} uncached/cached "
            f"{plain[-1] / cached[-1]:.2f}x | epoch 1 cached/uncached {cached[0] / plain[0]:.2f}x | "
            f"largest relative loss difference in epoch {args.epochs}: {diff:.1e}"
        )


if __name__ == "__main__":
    main()
