"""Alternatives that looked faster on paper, timed side by side against what the package does (ratios count).

1. Softplus of the selective scan's step sizes: ``F.softplus`` (used) against the "exact and faster" formulation
   ``where(x > 20, x, log1p(exp(min(x, 20))))``, with ``exp`` alone as the floor, on VMamba-T's stage-1 size.
2. DDAD's ensemble training step: the Python loop over the K members (used by default) against the grouped
   computation of ``vectorised_members`` (grouped convolutions, batched linear layers) and one
   ``torch.func.functional_call`` + ``vmap`` over stacked member parameters (forward and backward), and the loop
   with PyTorch's fused Adam (the optimiser's share of the step).
3. ASR-Net's training step in channels-first (used) and channels-last memory format.

    python benchmarks/cpu_alternatives.py --threads 1
    python benchmarks/cpu_alternatives.py --threads 2 --device cuda   # on a GPU the balance may differ

Each line prints the median time of each variant and its ratio to the variant the package uses.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from medad_monai.benchmarking import add_runtime_args, runtime_device
from medad_monai.losses.autoencoder import EnsembleReconstructionLoss
from medad_monai.networks.autoencoders import AEEnsemble
from medad_monai.networks.ddad import ASRNet


def _median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _report(title: str, timings: dict[str, float], used: str) -> None:
    print(title)
    for name, ms in timings.items():
        mark = " (used)" if name == used else ""
        print(f"  {name:<28s} {ms:9.2f} ms   {ms / timings[used]:5.2f}x{mark}")


def softplus(device: torch.device, repeats: int) -> None:
    x = torch.randn(1, 4 * 192, 4096, device=device) * 3

    def where_log1p() -> torch.Tensor:
        return torch.where(x > 20, x, torch.log1p(torch.exp(x.clamp(max=20))))

    timings = {
        "F.softplus": _median_ms(lambda: F.softplus(x), repeats, device),
        "where(log1p(exp))": _median_ms(where_log1p, repeats, device),
        "exp alone (floor)": _median_ms(lambda: torch.exp(x), repeats, device),
    }
    _report("softplus of (1, 768, 4096) step sizes", timings, "F.softplus")


def ensemble_step(device: torch.device, repeats: int, members: int = 3, batch: int = 16) -> None:
    torch.manual_seed(0)
    ens = AEEnsemble(members, "ae-u").to(device)
    x = torch.rand(batch, members, 1, 64, 64, device=device) * 2 - 1
    criterion = EnsembleReconstructionLoss("ae-u")
    opt = torch.optim.Adam(ens.parameters(), 1e-3)
    template = ens.members[0]

    def loop(optimiser: torch.optim.Optimizer = opt) -> None:
        ens.vectorised = False
        loss = criterion(ens.training_outputs(x))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def grouped() -> None:
        ens.vectorised = True
        loss = criterion(ens.training_outputs(x))
        opt.zero_grad()
        loss.backward()
        opt.step()

    fused = torch.optim.Adam(ens.parameters(), 1e-3, fused=True)

    def vectorised() -> None:
        names = [n for n, _ in template.named_parameters()]
        params = {n: torch.stack([dict(m.named_parameters())[n] for m in ens.members]) for n in names}
        buffers = {
            n: torch.stack([dict(m.named_buffers())[n] for m in ens.members]) for n, _ in template.named_buffers()
        }
        out = vmap(lambda p, b, xi: functional_call(template, (p, b), (xi,)), in_dims=(0, 0, 1))(params, buffers, x)
        loss = criterion({"images": x, "outputs": list(out.unbind(0))})
        opt.zero_grad()
        loss.backward()
        opt.step()

    timings = {
        "member loop": _median_ms(loop, repeats, device),
        "grouped (vectorised_members)": _median_ms(grouped, repeats, device),
        "vmap over members": _median_ms(vectorised, repeats, device),
        "member loop, fused Adam": _median_ms(lambda: loop(fused), repeats, device),
    }
    _report(f"DDAD ensemble training step (K={members}, batch {batch}, 64 px, AE-U)", timings, "member loop")


def asr_step(device: torch.device, repeats: int, batch: int = 8) -> None:
    net = ASRNet(2).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(batch, 2, 64, 64, device=device)

    def step(inp: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            loss = net(inp).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    first = _median_ms(step(x), repeats, device)
    net.to(memory_format=torch.channels_last)
    last = _median_ms(step(x.to(memory_format=torch.channels_last)), repeats, device)
    _report(
        f"ASR-Net training step (batch {batch}, 64 px, 128 channels)",
        {"channels first": first, "channels last": last},
        "channels first",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    add_runtime_args(parser)
    args = parser.parse_args()
    device = runtime_device(args)
    softplus(device, args.repeats)
    ensemble_step(device, args.repeats)
    asr_step(device, args.repeats)


if __name__ == "__main__":
    main()
