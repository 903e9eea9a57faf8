"""Which datastore studies are normal, anomalous or not yet reviewed.

Anomaly models train on normal images, which MONAI Label's stock trainer cannot express: its datalist holds only
images with a final label. Here a study's review status comes from what a radiologist does in 3D Slicer:

* reviewed **normal**: its final label is empty (the ``anomaly`` segment was cleared and the label submitted), or
  its image info says ``{"review": "normal"}`` (``PUT /datastore/image/info``, for scripts and viewers without
  segment editing);
* reviewed **anomalous**: its final label has foreground, or its image info says ``{"review": "anomalous"}``;
* **unlabeled**: neither. These are the candidates the active-learning strategies rank, and DDAD's unlabeled pool.

The image-info verdict wins over the label so that a study can be re-classified without editing its label.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "REVIEW_KEY",
    "ReviewStatus",
    "label_is_empty",
    "review_status",
    "studies_by_status",
    "is_volume_study",
    "training_items",
    "training_items_by_study",
]

logger = logging.getLogger("medad_monai")

REVIEW_KEY = "review"
FINAL_TAG = "final"


class ReviewStatus:
    """The three review states of a study."""

    NORMAL = "normal"
    ANOMALOUS = "anomalous"
    UNLABELED = "unlabeled"


def label_is_empty(path: str | Path) -> bool:
    """Whether a label file (NIfTI, NRRD, PNG, ...) has no foreground voxel. Raises ``ValueError`` naming the file
    when it cannot be read (a broken label must not silently count as normal)."""
    from monai.transforms import LoadImage

    try:
        arr = np.asarray(LoadImage(image_only=True)(str(path)))
    except Exception as e:  # readers raise many types; name the file
        raise ValueError(f"cannot read label '{path}': {type(e).__name__}: {e}") from e
    return not bool(np.any(arr > 0))


def review_status(datastore: Any, image_id: str) -> str:
    """:class:`ReviewStatus` of one study of a MONAI Label ``Datastore``."""
    verdict = str(datastore.get_image_info(image_id).get(REVIEW_KEY, "")).lower()
    if verdict in (ReviewStatus.NORMAL, ReviewStatus.ANOMALOUS):
        return verdict
    label_id = datastore.get_label_by_image_id(image_id, FINAL_TAG)
    if not label_id:
        return ReviewStatus.UNLABELED
    uri = datastore.get_label_uri(label_id, FINAL_TAG)
    try:
        return ReviewStatus.NORMAL if label_is_empty(uri) else ReviewStatus.ANOMALOUS
    except ValueError as e:
        logger.warning(f"study '{image_id}': {e}; treated as not reviewed")
        return ReviewStatus.UNLABELED


def studies_by_status(datastore: Any) -> dict[str, list[str]]:
    """Image ids of a datastore grouped by review status (each list sorted)."""
    groups: dict[str, list[str]] = {ReviewStatus.NORMAL: [], ReviewStatus.ANOMALOUS: [], ReviewStatus.UNLABELED: []}
    for image_id in sorted(datastore.list_images()):
        groups[review_status(datastore, image_id)].append(image_id)
    return groups


def _slice_files(
    path: Path, volume: np.ndarray, affine: np.ndarray, axis: int, cache_dir: Path, indices: list[int]
) -> list[str]:
    """Slices ``indices`` of a volume as 2D NIfTI files in ``cache_dir`` (reused while the study is unchanged)."""
    from medad_monai.inference import study_stamp, write_nifti

    stamp = "{}-{}".format(*study_stamp(path))
    tag = hashlib.sha256(f"{path.resolve()}|{stamp}|{axis}".encode()).hexdigest()[:12]
    stem = path.name.split(".")[0]
    files = []
    for k in indices:
        out = cache_dir / f"{stem}_{tag}_ax{axis}_{k:04d}.nii.gz"
        if not out.is_file():
            write_nifti(np.take(volume, k, axis=axis).astype(np.float32), affine, out)
        files.append(str(out))
    return files


def training_items_by_study(
    paths: Iterable[str], label: int, axis: int, cache_dir: str | Path, min_relative_body: float = 0.0
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """2D training items of datastore studies, for the 2D bundles' training configs, per study (in ``paths`` order).

    A 2D study is one item; a 3D study contributes its slices along ``axis`` that serving scores by the relative
    body rule (:func:`~medad_monai.inference.volume.body_slices`: some foreground, and at least ``min_relative_body``
    of the volume's largest slice's), each written once as a 2D NIfTI file in ``cache_dir``. So a volume reviewed
    normal teaches the model the sections it will be served, and the validation slices that calibrate the threshold
    are of the kind it decides (the shrinking end sections, which serving leaves out, would otherwise set it). A
    study that cannot be read is left out and reported (path -> reason), so one broken file does not stop training.
    """
    from medad_monai.inference import load_input
    from medad_monai.inference.volume import body_slices

    studies: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for p in paths:
        try:
            img = load_input(p)
        except Exception as e:  # ImageReadError and reader errors: report and go on
            skipped[str(p)] = str(e)
            continue
        if img.ndim == 3:  # (C, H, W): a 2D image
            studies[str(p)] = [{"image": str(p), "label": label}]
            continue
        volume = np.asarray(img[0]) if img.shape[0] == 1 else np.asarray(img).mean(0)
        affine = np.asarray(img.affine)
        _, inside = body_slices(torch.as_tensor(volume[None]), axis, None, 0.0, min_relative=min_relative_body)
        if len(inside) < volume.shape[axis]:
            logger.info(f"study '{p}': {len(inside)} of {volume.shape[axis]} slices inside the body used")
        slices = _slice_files(Path(p), volume, affine, axis, Path(cache_dir), inside)
        studies[str(p)] = [{"image": f, "label": label} for f in slices]
    for p, reason in skipped.items():
        logger.warning(f"study '{p}' left out of training: {reason}")
    return studies, skipped


def is_volume_study(study: str, items: list[dict[str, Any]]) -> bool:
    """Whether ``items`` (of :func:`training_items_by_study`) are the slices of a 3D study rather than the study."""
    return not (len(items) == 1 and items[0]["image"] == study)


def training_items(
    paths: Iterable[str], label: int, axis: int, cache_dir: str | Path, min_relative_body: float = 0.0
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The items of :func:`training_items_by_study`, all studies in one list."""
    studies, skipped = training_items_by_study(paths, label, axis, cache_dir, min_relative_body)
    return [item for items in studies.values() for item in items], skipped
