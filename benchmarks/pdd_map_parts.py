"""Which part of PDD's anomaly map localises, and which one inverts: a development-data diagnosis.

Trains the bundle's own network, data and optimizer (``bundles/pdd/configs/train.json``) in a plain loop, then scores
every part of the map on that dataset's test split: each student (prior, plain) at each level against the fused
target and against the WideResNet feature alone, and the full map (image AUROC of the max, pixel AUROC against the
lesion masks). It also prints the per-pixel norms of the two teachers' terms in the targets. Use the development
copy of the demo data (``medad-monai demo-data --out <dir> --seed 1``), never a benchmark's test split: this is how
the ``fusion`` default was chosen (bundles/pdd/docs/README.md, "What was measured").

    python benchmarks/pdd_map_parts.py <dev>/abdomen_ct --epochs 10
    python benchmarks/pdd_map_parts.py <dev>/abdomen_ct --epochs 10 --override '{"fusion": "sum"}'
    python benchmarks/pdd_map_parts.py <dev>/abdomen_ct --epochs 10 --targets wrn   # diagnostic: no VMamba term
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from medad_monai.anomaly_maps import GaussianBlur2d, multiscale_anomaly_map
from medad_monai.metrics.ranking import roc_auc
from medad_monai.networks.pdd import PDD, fuse

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pdd" / "configs"


def _plain(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).as_subclass(torch.Tensor)


def wrn_only_features(net: PDD, image: torch.Tensor) -> tuple[list, list, list]:
    """PDD's features with the VMamba term left out of the targets (the unified manifold keeps it): a diagnosis of
    whether the VMamba half of the targets hurts, not a method option."""
    f_r, f_m = net.teacher_features(image)
    unified = fuse(net.unify_adapter(f_m[3]), f_r[3], net.fusion)
    sizes = [list(f_r[2].shape[-2:]), list(f_r[1].shape[-2:])]
    p1, p2 = net.mpa(unified, sizes)
    return list(f_r[:3]), net.student(unified, [None, p1, p2]), net.student_plain(unified, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a dataset folder (train/good, test/good, test/bad, ground_truth)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--override", default="{}", help='JSON config overrides, e.g. \'{"fusion": "sum"}\'')
    ap.add_argument("--targets", choices=("fused", "wrn"), default="fused")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update(
        {
            "dataset_dir": args.dataset,
            "epochs": args.epochs,
            "bundle_root": "/tmp/pdd_map_parts",
            "device": "$torch.device('cpu')",
            "wrn_weights": "random",
            "vmamba_weights": "random",
            **json.loads(args.override),
        }
    )
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    net: PDD = parser.get_parsed_content("network")
    if args.targets == "wrn":
        net.features = lambda image: wrn_only_features(net, image)  # type: ignore[method-assign]
    loader, criterion = parser.get_parsed_content("train#dataloader"), parser.get_parsed_content("loss")
    opt, sched = parser.get_parsed_content("train#optimizer"), parser.get_parsed_content("train#lr_scheduler")
    for epoch in range(args.epochs):
        net.train()
        for batch in loader:
            loss = criterion(net.training_outputs(_plain(batch["image"])))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {float(loss):.4f}", flush=True)

    test = parser.get_parsed_content("evaluate#dataset")
    xs = torch.stack([_plain(it["image"]) for it in test])
    ys = np.array([int(it["label"]) for it in test])
    masks = torch.stack([_plain(it["mask"]) if "mask" in it else torch.zeros_like(xs[0, :1]) for it in test])
    blur = GaussianBlur2d(4.0)

    def up(d: torch.Tensor) -> torch.Tensor:
        return F.interpolate(d[:, None], size=list(xs.shape[-2:]), mode="bilinear", align_corners=True)

    def report(name: str, amap: torch.Tensor) -> None:
        amap = blur(amap)
        image = roc_auc(amap.flatten(1).max(1).values.numpy(), ys)
        bad = ys == 1
        pixel = roc_auc(amap[bad].flatten().numpy(), (masks[bad] > 0.5).flatten().numpy().astype(int))
        print(f"{name:34s} image AUROC {100 * image:5.1f}  pixel AUROC {100 * pixel:5.1f}")

    net.eval()
    with torch.no_grad():
        f_r, _ = net.teacher_features(xs)
        targets, s_prior, s_plain = net.features(xs)
        vm = [t - F.normalize(r, dim=1) if net.fusion == "normalized" else t - r for t, r in zip(targets, f_r)]
        print("per-pixel norm, WideResNet term:", [round(float(r.norm(dim=1).mean()), 1) for r in f_r[:3]])
        print("per-pixel norm, VMamba term:    ", [round(float(v.norm(dim=1).mean()), 1) for v in vm])
        report("full map", net(xs))
        size = list(xs.shape[-2:])
        kept = [
            multiscale_anomaly_map(students[k : k + 1], targets[k : k + 1], size, "sum", net.align_corners)
            for name, students in (("prior", s_prior), ("plain", s_plain))
            for k in range(3)
            if not (name == "plain" and k < net.diverse_levels)
        ]
        report("map without the plain diverse levels", sum(kept))
        for name, students in (("prior", s_prior), ("plain", s_plain)):
            for k in range(3):
                report(f"{name} level {k + 1} vs target", up(1 - F.cosine_similarity(students[k], targets[k], dim=1)))
                report(f"{name} level {k + 1} vs WideResNet", up(1 - F.cosine_similarity(students[k], f_r[k], dim=1)))


if __name__ == "__main__":
    main()
