"""The data a bundle trains, calibrates and is tested on, read from its own config, for the baselines to share.

One-class bundles (DDAD, PDD) learn from the ``data`` datalist's ``train`` split and calibrate their threshold on
its ``val`` normals. A few-shot bundle (D²4FAD: its config has a ``support_loader``) trains on other datasets and
sees only K normals of the target: the baselines then learn from the same K support images (as the paper's
few-shot baselines do) and calibrate on the same held-out target normals
(:func:`~medad_monai.data.support.calibration_holdout`). Every method is tested on ``data.test``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureTyped, Resized

from medad_monai.data.support import calibration_holdout, select_support, support_datalist
from medad_monai.transforms import ChannelPolicyd, IntensityPolicyd, LoadAnomalyImaged

__all__ = [
    "ComparisonData",
    "baseline_preprocessing",
    "bundle_parser",
    "comparison_data",
    "load_batch",
    "load_masks",
]


@dataclass
class ComparisonData:
    """What every method of one comparison shares.

    Attributes:
        setting: ``"one-class"`` or ``"few-shot"``.
        dataset: the test data's ``dataset_dir`` (a folder, ``demo:<domain>``, or the datalist file when given).
        train: normals the baselines learn from (``{"image": path}`` items).
        calibration: normals whose score quantile becomes a baseline's threshold.
        test: labelled test items (``label`` 0 normal / 1 anomalous).
        image_size: the bundle's ``image_size``; quantile: its ``threshold_quantile``.
        intensity_policy: the bundle's ``intensity_policy`` (:class:`~medad_monai.transforms.IntensityPolicyd`), so
            that the baselines see the intensities the bundle sees.
    """

    setting: str
    dataset: str
    train: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    test: list[dict[str, Any]]
    image_size: int
    quantile: float
    intensity_policy: str = "auto"
    intensity_range: tuple[float, float] | None = None

    def summary(self) -> dict[str, Any]:
        labels = [int(it["label"]) for it in self.test]
        return {
            "setting": self.setting,
            "dataset": self.dataset,
            "train_images": len(self.train),
            "calibration_images": len(self.calibration),
            "test_images": len(self.test),
            "test_anomalous": sum(labels),
            "image_size": self.image_size,
            "threshold_quantile": self.quantile,
            "intensity_policy": self.intensity_policy,
            "intensity_range": self.intensity_range,
        }


def bundle_parser(configs: Path, overrides: Mapping[str, Any]) -> ConfigParser:
    """A parser holding the bundle's ``train.json`` + ``evaluate.json`` from its ``configs`` folder, with the
    comparison's ``overrides`` applied (what :func:`comparison_data` reads)."""
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    parser.update(dict(overrides))
    return parser


def comparison_data(parser: ConfigParser) -> ComparisonData:
    """Read :class:`ComparisonData` from a parser holding the bundle's ``train.json`` + ``evaluate.json`` (with the
    comparison's overrides applied)."""
    dataset = str(parser.get_parsed_content("datalist") or parser.get_parsed_content("dataset_dir"))
    datalist = parser.get_parsed_content("data", instantiate=True)
    test = list(datalist.test)
    if not test:
        raise ValueError(f"the comparison needs labelled test images; '{dataset}' has none")
    size, quantile = int(parser["image_size"]), float(parser.get("threshold_quantile", 0.95))
    policy = str(parser.get("intensity_policy", "minmax"))
    window = parser.get("intensity_range")
    window = None if window is None else (float(window[0]), float(window[1]))
    if "support_loader" in parser:
        seed, k = int(parser["seed"]), int(parser["num_support"])
        source = str(parser.get_parsed_content("support_dir"))
        support, rest = select_support(support_datalist(source), k, seed, source)
        calibration = calibration_holdout(rest, int(parser.get("num_calibration", 16)), seed, source)
        return ComparisonData("few-shot", dataset, support, calibration, test, size, quantile, policy, window)
    train, val = list(datalist.train), list(datalist.val)
    return ComparisonData("one-class", dataset, train, val, test, size, quantile, policy, window)


def baseline_preprocessing(
    image_size: int, intensity_policy: str = "auto", intensity_range: Sequence[float] | None = None
) -> Compose:
    """The anomalib baselines' input: 3 channels, ``image_size`` square, intensities in ``[0, 1]`` by the bundle's
    ``intensity_policy`` (the same steps as the PDD and D²4FAD bundles' ``preprocessing``)."""
    return Compose(
        [
            LoadAnomalyImaged(keys="image"),
            ChannelPolicyd(keys="image", channels=3),
            Resized(keys="image", spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
            IntensityPolicyd(keys="image", minv=0.0, maxv=1.0, policy=intensity_policy, fixed_range=intensity_range),
            EnsureTyped(keys="image", dtype=torch.float32),
        ]
    )


def load_masks(items: list[Mapping[str, Any]], image_size: int) -> torch.Tensor | None:
    """Binary lesion masks ``(N, 1, S, S)`` at ``image_size`` (nearest resampling, as the bundles resize masks); a
    normal image without a mask is all background. ``None`` when an anomalous image has no mask (no pixel
    metric then)."""
    if any(int(it["label"]) == 1 and not it.get("mask") for it in items):
        return None
    transform = Compose(
        [
            LoadAnomalyImaged(keys="mask"),
            Resized(keys="mask", spatial_size=(image_size, image_size), mode="nearest"),
        ]
    )
    masks = []
    for it in items:
        if it.get("mask"):
            mask = torch.as_tensor(transform({"mask": it["mask"]})["mask"]).as_subclass(torch.Tensor)[:1] > 0
        else:
            mask = torch.zeros(1, image_size, image_size, dtype=torch.bool)
        masks.append(mask)
    return torch.stack(masks)


def load_batch(items: list[Mapping[str, Any]], transform: Compose) -> torch.Tensor:
    """Preprocess ``items`` (only their ``image``) and stack them to ``(N, C, H, W)``."""
    if not items:
        raise ValueError("no images to load")
    images = [torch.as_tensor(transform({"image": it["image"]})["image"]).as_subclass(torch.Tensor) for it in items]
    return torch.stack(images).float()
