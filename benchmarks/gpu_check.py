"""GPU check: each bundle's training step and inference at the paper's sizes, float32 against mixed precision.

For every bundle it builds the network, loss and training inferer from the bundle's own ``train.json`` (random
weights: speed does not depend on them), runs a few optimiser steps on random batches and a few inference batches,
first in float32, then with the bundles' ``amp`` switch (:class:`~medad_monai.engines.steps.MethodInferer` under
``torch.autocast``, bfloat16 by default), then with ``amp`` and ``channels_last`` (the network and its inputs in
channels-last memory format), and prints images/s for each and their ratio to float32, with the largest map
difference relative to the float32 map's largest value; for DDAD also the float32 training step with
``vectorised_members`` (the members as one grouped computation) against the member loop. Sizes follow the papers:
DDAD 64 px (Cai et al.), PDD and D²4FAD 256 px. On an H100/H200-class GPU the whole check takes well under 5 minutes.

    python benchmarks/gpu_check.py                               # CUDA, all bundles, paper sizes
    python benchmarks/gpu_check.py --device cpu --image_size 64 --batch_size 2 --iterations 2   # a smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from medad_monai.engines.steps import AMP_DTYPES, MethodInferer

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
PAPER_SIZE = {"ddad": 64, "pdd": 256, "d24fad": 256}
RANDOM_WEIGHTS = {
    "ddad": {},
    "pdd": {"wrn_weights": "random", "vmamba_weights": "random"},
    "d24fad": {"teacher_weights": "random"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step: Callable[[], Any], images: int, iterations: int, device: torch.device) -> float:
    """Images per second of ``step`` (``images`` per call) over ``iterations`` calls after two warm-up calls."""
    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return images * iterations / (time.perf_counter() - start)


def _build(bundle: str, size: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, MethodInferer]:
    """(network, the module the trainer optimises, loss, training inferer) from the bundle's ``train.json``."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    for k, v in {"image_size": size, **RANDOM_WEIGHTS[bundle]}.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    trained = net.ndm if bundle == "ddad" else net  # DDAD's first stage: the normal-data ensemble
    return net, trained, parser.get_parsed_content("loss"), parser.get_parsed_content("train#inferer")


def _inputs(bundle: str, net: torch.nn.Module, batch: int, size: int, device: torch.device) -> Any:
    channels = 1 if bundle == "ddad" else 3
    x = torch.rand(batch, channels, size, size, device=device)
    if bundle == "d24fad":
        return {"query": x, "support": torch.rand(batch, net.num_support, channels, size, size, device=device)}
    if bundle == "ddad":  # one batch per ensemble member (each member sees its own order of the normals)
        return {"train": torch.rand(batch, len(net.ndm.members), channels, size, size, device=device), "infer": x}
    return x


def check(bundle: str, size: int, batch: int, iterations: int, device: torch.device, amp_dtype: str) -> dict:
    torch.manual_seed(0)
    net, trained, loss_fn, train_inferer = _build(bundle, size)
    net.to(device)
    optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=1e-4)
    inputs = _inputs(bundle, net, batch, size, device)
    train_inputs = inputs["train"] if bundle == "ddad" else inputs
    out: dict[str, Any] = {"bundle": bundle, "size": size, "batch": batch}
    # float32, AMP, then AMP in channels-last format (last: it converts the network in place)
    variants = {"fp32": {}, "amp": {"amp": True}, "amp_cl": {"amp": True, "channels_last": True}}

    def train_step(inferer: MethodInferer) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(inferer(train_inputs, trained), None).backward()
        optimizer.step()

    for name, options in variants.items():
        if name == "amp_cl":
            continue  # timed after the float32 network's DDAD and inference figures below
        inferer = MethodInferer(train_inferer.method, amp_dtype=amp_dtype, **options)
        trained.train()
        out[f"train_{name}"] = _rate(lambda i=inferer: train_step(i), batch, iterations, device)
    if bundle == "ddad":  # the members as one grouped computation (vectorised_members) against the member loop
        trained.vectorised = True
        out["train_grouped"] = _rate(lambda: train_step(MethodInferer(train_inferer.method)), batch, iterations, device)
        trained.vectorised = False
    x = inputs if isinstance(inputs, torch.Tensor) else inputs["query" if bundle == "d24fad" else "infer"]
    if bundle == "d24fad":
        with torch.no_grad():
            net.eval().set_support(inputs["support"][0])
    maps = {}
    for name, options in variants.items():
        inferer = MethodInferer("forward", amp_dtype=amp_dtype, **options)
        net.eval()
        with torch.no_grad():
            out[f"infer_{name}"] = _rate(lambda i=inferer: i(x, net), batch, iterations, device)
            maps[name] = inferer(x, net)
        if name == "amp_cl":  # the network is channels-last now: its training step in that format
            trained.train()
            inferer = MethodInferer(train_inferer.method, amp_dtype=amp_dtype, **options)
            out["train_amp_cl"] = _rate(lambda i=inferer: train_step(i), batch, iterations, device)
    scale = maps["fp32"].abs().amax()
    out["map_error"] = float((maps["amp"] - maps["fp32"]).abs().amax() / scale)
    out["map_error_cl"] = float((maps["amp_cl"] - maps["fp32"]).abs().amax() / scale)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--bundles", default="ddad,pdd,d24fad")
    parser.add_argument("--image_size", type=int, default=0, help="0: each paper's size (DDAD 64, PDD/D²4FAD 256)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10, help="timed steps (after two warm-up steps)")
    parser.add_argument("--amp_dtype", default="bfloat16", choices=sorted(AMP_DTYPES))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available here; run it on a GPU machine or pass --device cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, amp dtype {args.amp_dtype}, {args.iterations} timed steps")
    print(
        "| bundle | px | batch | train img/s fp32 | amp | x | amp + channels-last | x | infer img/s fp32 | amp | x "
        "| amp + channels-last | x | map diff amp | amp + channels-last |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for bundle in args.bundles.split(","):
        size = args.image_size or PAPER_SIZE[bundle]
        r = check(bundle, size, args.batch_size, args.iterations, device, args.amp_dtype)
        cells = [bundle, size, r["batch"]]
        for stage in ("train", "infer"):
            fp32 = r[f"{stage}_fp32"]
            cells += [f"{fp32:.1f}", f"{r[f'{stage}_amp']:.1f}", f"{r[f'{stage}_amp'] / fp32:.2f}"]
            cells += [f"{r[f'{stage}_amp_cl']:.1f}", f"{r[f'{stage}_amp_cl'] / fp32:.2f}"]
        cells += [f"{r['map_error']:.1%}", f"{r['map_error_cl']:.1%}"]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        if "train_grouped" in r:
            print(
                f"  {bundle}: train img/s fp32 with vectorised_members {r['train_grouped']:.1f} "
                f"(x{r['train_grouped'] / r['train_fp32']:.2f} of the member loop)",
                flush=True,
            )


if __name__ == "__main__":
    main()
