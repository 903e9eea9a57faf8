"""Write an :class:`~medad_monai.inference.volume.AnomalyResult`: float NIfTI map, uint8 NIfTI mask (both with the
input's affine), a JSON summary and a PNG overlay of the most anomalous slice. Every write is atomic
(:func:`medad_monai.io.atomic_path`), so a reader never sees a half-written file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medad_monai.inference.volume import AnomalyResult
from medad_monai.io import atomic_path, atomic_write_json, file_stem

__all__ = [
    "result_stem",
    "top_slice_2d",
    "write_json",
    "write_mask",
    "write_map",
    "write_nifti",
    "write_overlay",
    "write_result",
]


def result_stem(result: AnomalyResult) -> str:
    """File stem for a result's outputs: the input's stem (``brain.nii.gz`` -> ``brain``), or ``image``."""
    if result.source.startswith("<"):
        return "image"
    p = Path(result.source)
    return p.name if p.is_dir() else file_stem(str(p))


def write_nifti(arr: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """``arr`` as NIfTI (``.nii`` or ``.nii.gz``, by the name) with ``affine``, written atomically."""
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    data = img.to_bytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_map(result: AnomalyResult, path: str | os.PathLike) -> Path:
    """The float32 anomaly map as NIfTI (``.nii`` or ``.nii.gz``) with the input's affine."""
    return write_nifti(np.asarray(result.map, dtype=np.float32), result.affine, path)


def write_mask(result: AnomalyResult, path: str | os.PathLike) -> Path:
    """The uint8 mask (1 = anomaly) as NIfTI with the input's affine: a label map viewers show as ``anomaly``."""
    return write_nifti(np.asarray(result.mask, dtype=np.uint8), result.affine, path)


def write_json(result: AnomalyResult, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """The result's summary (score, threshold, decision, slice scores, model name/version, source) as JSON."""
    return atomic_write_json({**result.summary(), **(extra or {})}, path)


def top_slice_2d(result: AnomalyResult, array: np.ndarray | None = None) -> np.ndarray:
    """The most anomalous 2D slice of ``array`` (default the map), transposed to display rows x columns.

    MONAI's loaders put the image's columns on the first axis (``LoadImage`` of a PNG gives ``(W, H)``), so the
    transpose shows a PNG as it was and a NIfTI slice as the usual radiological ``(y, x)`` picture.
    """
    a = np.asarray(result.map if array is None else array)
    if a.ndim == 3:
        a = np.take(a, result.top_slice, axis=result.axis if result.axis is not None else 2)
    return a.T


def write_overlay(result: AnomalyResult, path: str | os.PathLike, alpha: float = 0.5) -> Path:
    """PNG of the map (jet) over the image on the most anomalous slice (``medad_monai.visualize.overlay_rgb``)."""
    from PIL import Image

    from medad_monai.visualize import overlay_rgb

    image = result.image if result.image is not None else np.zeros_like(result.map)
    rgb = overlay_rgb(top_slice_2d(result, image), top_slice_2d(result), alpha=alpha)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)


def write_result(
    result: AnomalyResult,
    output_dir: str | os.PathLike,
    stem: str | None = None,
    overlay: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<stem>_anomaly_map.nii.gz``, ``<stem>_anomaly_mask.nii.gz``, ``<stem>_anomaly.json`` and
    ``<stem>_overlay.png`` into ``output_dir``; returns their paths by kind (``map``, ``mask``, ``json``, ``overlay``).
    The JSON lists the other files' names."""
    out = Path(output_dir)
    stem = stem or result_stem(result)
    paths = {
        "map": write_map(result, out / f"{stem}_anomaly_map.nii.gz"),
        "mask": write_mask(result, out / f"{stem}_anomaly_mask.nii.gz"),
    }
    if overlay:
        paths["overlay"] = write_overlay(result, out / f"{stem}_overlay.png")
    files = {k: p.name for k, p in paths.items()}
    paths["json"] = write_json(result, out / f"{stem}_anomaly.json", extra={"files": files, **(extra or {})})
    return paths
