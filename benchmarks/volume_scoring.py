"""Volume serving on the 3D demo volumes: does a lesion volume score above the same subject without the lesion, does
the ``anomaly`` label fall on the lesion, and what does the serving core cost over the network's own forward?

Uses trained bundles of a ``medad-monai benchmark`` run (``<run>/<bundle>/<domain>/seed<k>/bundle``: DDAD and PDD
trained on the domain, D²4FAD adapted to it) and the demo volumes of :mod:`medad_monai.data.demo_volumes` (one
subject per seed, without and with a lesion over a few slices). For each bundle, domain and volume seed it prints
the two volume scores, whether the lesion volume ranks first, how much the lesion raises the scores of its own
slices over the same slices of the normal volume (mean), the slice the score comes from, the fraction of lesion
voxels under the label and the label's Dice, then the serving time (:func:`score_volume`: loading excluded,
preprocessing, network, inversion, label) over the network's batched forward on the same preprocessed slices
(target <= 1.5x).

    python benchmarks/volume_scoring.py --run runs/benchmark --bundles ddad,pdd,d24fad --seeds 0,1,2 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from medad_monai.data.demo import resolve_dataset_dir
from medad_monai.data.demo_volumes import VOLUME_DOMAINS, demo_volume
from medad_monai.data.foreground import body_extent, foreground_fraction
from medad_monai.inference import load_bundle_model
from medad_monai.inference.volume import score_volume, select_slices
from medad_monai.transforms import INTENSITY_WINDOW_KEY


def legacy_body_extent(model, domain: str) -> float:
    """For a bundle trained before models recorded their body extent: the extent of the domain's ``train/good``
    normals through the bundle's preprocessing (the calibration normals are a subset of them)."""
    folder = resolve_dataset_dir(f"demo:{domain}") / "train" / "good"
    images = [model.preprocessing({"image": str(p)})["image"] for p in sorted(folder.glob("*.png"))]
    return body_extent(foreground_fraction(torch.stack([torch.as_tensor(x) for x in images])))


def network_seconds(model, image: np.ndarray, least: float | None, relative: float, batch_size: int = 16) -> float:
    """The network's forward alone on the preprocessed slices the serving core scores, in its batches."""
    data = torch.as_tensor(image, dtype=torch.float32)[None]
    window, _, scored = select_slices(model, data, 2, min_body_fraction=least, min_relative_body=relative)
    meta = {"filename_or_obj": "<array>", INTENSITY_WINDOW_KEY: window}
    items = [
        model.image_transforms({"image": MetaTensor(data[:, :, :, i].clone(), meta=meta)})["image"] for i in scored
    ]
    batch = torch.stack([torch.as_tensor(x).as_subclass(torch.Tensor) for x in items])
    start = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        model.predict(batch[i : i + batch_size])
    return time.perf_counter() - start


def paired_rise(normal: list, lesion: list, slices: list[int]) -> float:
    """Mean rise of the lesion slices' scores over the same slices of the normal twin (slices scored in both)."""
    pairs = [(lesion[z], normal[z]) for z in slices if lesion[z] is not None and normal[z] is not None]
    return float(np.mean([a - b for a, b in pairs])) if pairs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a `medad-monai benchmark` output folder")
    parser.add_argument("--bundles", default="ddad,pdd,d24fad")
    parser.add_argument("--domains", default=",".join(VOLUME_DOMAINS))
    parser.add_argument("--seeds", default="0,1,2", help="demo volume seeds (subjects)")
    parser.add_argument("--training_seed", type=int, default=0, help="which trained bundle of the run")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--min_relative_body", type=float, default=0.9, help="score_volume's relative body rule (0: absolute only)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        "| bundle | domain | subject | normal | lesion | lesion first | lesion slices rise | top slice (lesion slices) "
        "| lesion voxels labelled | label Dice | serve s | network s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    wins, rises, labelled, total, ratios = 0, 0, 0, 0, []
    rel = args.min_relative_body
    for bundle in args.bundles.split(","):
        for domain in args.domains.split(","):
            root = Path(args.run) / bundle / domain / f"seed{args.training_seed}" / "bundle"
            if not (root / "models" / "model.pt").is_file():
                print(f"| {bundle} | {domain} | - | no trained bundle at {root} |")
                continue
            model = load_bundle_model(root, device="cpu")
            least = None
            if not np.isfinite(model.body_fraction):
                least = legacy_body_extent(model, domain)
                print(
                    f"| {bundle} | {domain} | - | trained before the body extent was recorded: {least:.3f} from "
                    "its train/good normals |"
                )
            for seed in seeds:
                normal, lesion = demo_volume(domain, False, seed), demo_volume(domain, True, seed)
                kwargs = {"min_body_fraction": least, "min_relative_body": rel}
                rn = score_volume(model, normal.image, affine=normal.affine, **kwargs)
                start = time.perf_counter()
                rl = score_volume(model, lesion.image, affine=lesion.affine, **kwargs)
                serve = time.perf_counter() - start
                net = network_seconds(model, lesion.image, least, rel)
                truth, label = lesion.mask.astype(bool), rl.mask.astype(bool)
                covered = (truth & label).sum() / max(truth.sum(), 1)
                dice = 2 * (truth & label).sum() / max(truth.sum() + label.sum(), 1)
                first = rl.score > rn.score
                # the same subject's lesion slices with and without the lesion: does the lesion raise their scores?
                rise = paired_rise(rn.slice_scores, rl.slice_scores, lesion.lesion_slices)
                wins, rises, total = wins + int(first), rises + int(rise > 0), total + 1
                labelled += int(covered > 0)
                ratios.append(serve / net)
                print(
                    f"| {bundle} | {domain} | {seed} | {rn.score:.4f} | {rl.score:.4f} | {'yes' if first else 'no'} "
                    f"| {rise:+.4f} | {rl.top_slice} ({lesion.lesion_slices[0]}-{lesion.lesion_slices[-1]}) "
                    f"| {covered:.2f} | {dice:.2f} | {serve:.2f} | {net:.2f} | {serve / net:.2f} |",
                    flush=True,
                )
    print(
        f"\nlesion volume above the normal one: {wins} of {total}; lesion slices above the same slices without the "
        f"lesion (mean over them): {rises} of {total}; label on the lesion: {labelled} of {total} "
        f"(min_relative_body {rel}); serving / network time: median "
        f"{np.median(ratios):.2f}x (max {np.max(ratios):.2f}x)"
    )


if __name__ == "__main__":
    main()
