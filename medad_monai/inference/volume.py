"""Score a 2D image or a 3D volume with a 2D anomaly bundle, slice by slice, keeping the input's geometry.

For each 2D slice along ``axis`` the bundle's own per-image transforms run (``BundleModel.image_transforms``: the
config's channel policy, resize to the network size and intensity scaling), the network runs on batches of
slices, each slice's score is the bundle's reduction (``AnomalyScored``: mean for DDAD, max for the others) of its
network-resolution map, exactly as the bundle's ``postprocessing`` computes it, and each map is brought back to the
slice's size with MONAI's ``Invertd`` on the bundle's transforms (as the config's ``Invertd`` does). The slice maps
are stacked into a map with exactly the input's spatial shape and affine.

Intensity scaling follows the bundle's ``intensity_policy`` slice by slice: a file with a stored range (8/16-bit
raster, DICOM window) is scaled by that range, as the bundle's loader does; float volumes (NIfTI) are min-max scaled
per slice, on purpose: the 2D bundles were trained on 2D images each scaled on its own, so a slice scaled on its
own is what the network knows; scaling by the volume's range would make slices that hold little of the volume's
intensity range look unlike any training image. The cost: an almost empty slice is stretched to the full range (a
constant slice stays constant).

MONAI's ``SliceInferer`` was considered: it runs a 2D network over the slices of a tensor at the slices' native size
and cannot apply per-slice preprocessing (resize, channel policy, per-slice scaling) or per-slice scores, which
the 2D bundles need, so the slicing here is explicit and reuses the bundle's transforms instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PydicomReader
from monai.transforms import Invertd, LoadImage

from medad_monai.inference.bundle_model import BundleModel
from medad_monai.transforms import ImageReadError

__all__ = [
    "MASK_SCOPES",
    "VOLUME_REDUCTIONS",
    "AnomalyResult",
    "load_input",
    "reduce_scores",
    "score_image",
    "score_volume",
]

VOLUME_REDUCTIONS = ("max", "mean", "topk")
MASK_SCOPES = ("anomalous_slices", "all")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass
class AnomalyResult:
    """What scoring one image or volume gives.

    Attributes:
        map: float32 anomaly map with exactly the input's spatial shape (2D ``(X, Y)`` or 3D ``(X, Y, Z)``, in the
            axis order MONAI's ``LoadImage`` gives: first axis = image columns for PNG, as ``LoadImage``).
        mask: uint8 ``map > pixel_threshold`` (all zeros when no threshold is known); with ``mask_scope``
            ``"anomalous_slices"`` (default) only in the slices (the image, for 2D) whose score exceeds the threshold.
        score: the image (2D) or volume (3D) score; slice_scores: the score of each slice along ``axis``
            (length 1 for a 2D image).
        threshold: the decision threshold used (the model's calibrated one unless overridden); NaN if none.
        pixel_threshold: the value ``mask`` was cut at (``threshold`` unless overridden).
        decision: 1 anomalous (``score > threshold``), 0 normal, -1 unknown (threshold NaN: model not calibrated),
            as the bundles' ``ThresholdDecisiond`` and ``scores.csv``.
        affine: 4x4 affine of the input (identity for arrays given without one).
        source: the input path, or ``"<array>"``.
        axis: the slicing axis (None for 2D); volume_reduction: how slice scores became ``score``.
        image: the input intensities (channels averaged), spatial shape: what overlays draw on.
        model: :meth:`BundleModel.describe` of the model that scored it.
    """

    map: np.ndarray
    mask: np.ndarray
    score: float
    slice_scores: list[float]
    threshold: float
    decision: int
    affine: np.ndarray
    source: str
    pixel_threshold: float = float("nan")
    mask_scope: str = "anomalous_slices"
    axis: int | None = None
    volume_reduction: str = "max"
    image: np.ndarray | None = field(default=None, repr=False)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def is_anomalous(self) -> bool | None:
        """``True``/``False`` from the decision, ``None`` when the threshold is unknown."""
        return None if self.decision < 0 else bool(self.decision)

    @property
    def top_slice(self) -> int:
        """Index (along ``axis``) of the most anomalous slice; 0 for a 2D image."""
        return int(np.argmax(self.slice_scores)) if self.slice_scores else 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "source": self.source,
            "score": self.score,
            "threshold": None if not np.isfinite(self.threshold) else self.threshold,
            "pixel_threshold": None if not np.isfinite(self.pixel_threshold) else self.pixel_threshold,
            "mask_scope": self.mask_scope,
            "decision": self.decision,
            "calibrated": bool(np.isfinite(self.threshold)),
            "slice_scores": list(self.slice_scores),
            "top_slice": self.top_slice,
            "axis": self.axis,
            "volume_reduction": self.volume_reduction,
            "shape": list(self.map.shape),
            "anomalous_pixels": int(self.mask.sum()),
            "model": dict(self.model),
        }


def _is_dicom_file(p: Path) -> bool:
    if p.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def load_input(path: str | os.PathLike) -> MetaTensor:
    """Load an image or volume channel-first with MONAI's ``LoadImage`` (DICOM files and series folders with
    ``PydicomReader``). Raises :class:`~medad_monai.transforms.ImageReadError` naming the path."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"cannot read image '{p}': no such file or folder")
    dicom = p.is_dir() or _is_dicom_file(p)
    try:
        loader = LoadImage(image_only=True, ensure_channel_first=True, reader=PydicomReader() if dicom else None)
        img = loader(str(p))
    except Exception as e:  # readers raise many types; the caller needs the file and the reason
        raise ImageReadError(f"cannot read image '{p}': {type(e).__name__}: {e}") from e
    if img.ndim not in (3, 4):
        raise ImageReadError(f"image '{p}' has shape {tuple(img.shape)}; expected a 2D image or a 3D volume")
    if not torch.isfinite(img).all():
        raise ImageReadError(f"image '{p}' contains NaN or infinite values")
    return img


def _as_input(
    image: str | os.PathLike | np.ndarray | torch.Tensor, affine: np.ndarray | None
) -> tuple[torch.Tensor, np.ndarray, str]:
    """Channel-first float tensor, 4x4 affine and a source name."""
    if isinstance(image, (str, os.PathLike)):
        img = load_input(image)
        source = str(image)
    elif isinstance(image, MetaTensor):  # channel first, as LoadImage gives
        img, source = image, str(image.meta.get("filename_or_obj", "<array>"))
    else:  # spatial only: (X, Y) or (X, Y, Z)
        arr = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
        if arr.ndim not in (2, 3):
            raise ValueError(f"an array input must be 2D or 3D (spatial only), got shape {tuple(arr.shape)}")
        img, source = arr[None], "<array>"
    if affine is None:
        affine = img.affine.detach().cpu().numpy() if isinstance(img, MetaTensor) else np.eye(4)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape == (3, 3):  # 2D affine -> 4x4
        a4 = np.eye(4)
        a4[:2, :2], a4[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = a4
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 3x3 or 4x4, got {affine.shape}")
    data = torch.as_tensor(img).detach().cpu().float().as_subclass(torch.Tensor)
    if not torch.isfinite(data).all():
        raise ImageReadError(f"image '{source}' contains NaN or infinite values")
    return data, affine, source


def reduce_scores(slice_scores: list[float] | np.ndarray, reduction: str = "max", top_k: int = 3) -> float:
    """Volume score from slice scores: ``max`` (default), ``mean``, or ``topk`` (mean of the ``top_k`` largest)."""
    s = np.asarray(slice_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no slice scores")
    if reduction == "max":
        return float(s.max())
    if reduction == "mean":
        return float(s.mean())
    if reduction == "topk":
        k = max(1, min(int(top_k), s.size))
        return float(np.sort(s)[-k:].mean())
    raise ValueError(f"volume reduction must be one of {VOLUME_REDUCTIONS}, got {reduction!r}")


def _decision(score: float, threshold: float) -> int:
    return int(score > threshold) if np.isfinite(threshold) else -1


@torch.no_grad()
def _score_slices(
    model: BundleModel, slices: list[torch.Tensor], batch_size: int, source: str
) -> tuple[list[torch.Tensor], list[float]]:
    """Maps at each slice's own size (``(H, W)`` tensors) and scores, for channel-first 2D slices."""
    inverter = Invertd(keys="pred", transform=model.image_transforms, orig_keys="image", nearest_interp=False)
    maps: list[torch.Tensor] = []
    scores: list[float] = []
    # the source file travels with each slice, so that the intensity policy reads its stored range (8/16-bit, DICOM
    # window) exactly as the bundle's own loader does
    meta = {"filename_or_obj": source}
    for start in range(0, len(slices), batch_size):
        try:
            items = [
                model.image_transforms({"image": MetaTensor(s.clone(), meta=meta)})
                for s in slices[start : start + batch_size]
            ]
        except Exception as e:  # e.g. a 4D series whose "channels" are time points: name the input
            raise ImageReadError(f"image '{source}' does not fit bundle '{model.root}': {e}") from e
        batch = torch.stack([torch.as_tensor(it["image"]).as_subclass(torch.Tensor) for it in items])
        pred = model.predict(batch)
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise RuntimeError(f"bundle '{model.root}': network returned shape {tuple(pred.shape)}, not (B, 1, H, W)")
        scores.extend(float(v) for v in model.score(pred))
        for it, m in zip(items, pred):
            out = inverter({"image": it["image"], "pred": MetaTensor(m)})["pred"]
            maps.append(torch.as_tensor(out).as_subclass(torch.Tensor).float()[0])
    return maps, scores


def score_volume(
    model: BundleModel,
    image: str | os.PathLike | np.ndarray | torch.Tensor,
    affine: np.ndarray | None = None,
    axis: int = 2,
    volume_reduction: str = "max",
    top_k: int = 3,
    threshold: float | None = None,
    pixel_threshold: float | None = None,
    mask_scope: str = "anomalous_slices",
    batch_size: int = 16,
) -> AnomalyResult:
    """Score a 2D image or a 3D volume with a 2D bundle.

    Args:
        model: from :func:`~medad_monai.inference.load_bundle_model`.
        image: a path (NIfTI 2D/3D, DICOM file, DICOM series folder, PNG/JPEG), a channel-first ``MetaTensor``
            (as ``LoadImage`` gives), or a spatial-only array ``(X, Y)`` / ``(X, Y, Z)``.
        affine: the array's 4x4 (or 2D 3x3) affine; default the MetaTensor's or the file's, else identity.
        axis: spatial axis (0, 1, 2) sliced for 3D inputs; ignored for 2D. Default 2 (axial for RAS NIfTI).
        volume_reduction: ``max`` (default), ``mean`` or ``topk`` of the slice scores; ``top_k`` for ``topk``.
        threshold: overrides the model's calibrated threshold for the decision (and the mask).
        pixel_threshold: overrides the value the map is cut at for ``mask`` (default: ``threshold``). The stored
            threshold is calibrated on image scores; for ``max``-reduced bundles a pixel above it is exactly what
            makes the image anomalous, for ``mean``-reduced ones (DDAD) it marks the pixels above the mean level.
        mask_scope: ``"anomalous_slices"`` (default): the mask is kept only in slices (for 2D: the image) whose own
            score exceeds the threshold, so the label agrees with the decision; for ``max``-reduced bundles this
            changes nothing (no pixel of a normal slice exceeds the threshold), for ``mean``-reduced ones it keeps
            normal slices free of above-average pixels. ``"all"``: every pixel above ``pixel_threshold``.
        batch_size: slices per network call.

    Raises:
        ImageReadError: naming the file, when it cannot be read or holds non-finite values.
    """
    if volume_reduction not in VOLUME_REDUCTIONS:
        raise ValueError(f"volume_reduction must be one of {VOLUME_REDUCTIONS}, got {volume_reduction!r}")
    if mask_scope not in MASK_SCOPES:
        raise ValueError(f"mask_scope must be one of {MASK_SCOPES}, got {mask_scope!r}")
    data, aff, source = _as_input(image, affine)
    spatial = tuple(data.shape[1:])
    if len(spatial) == 2:
        slices, ax = [data], None
    else:
        if axis not in (0, 1, 2, -1, -2, -3):
            raise ValueError(f"axis must be 0, 1 or 2 for a 3D volume, got {axis}")
        ax = axis % 3
        slices = list(torch.unbind(data, dim=ax + 1))
    maps, slice_scores = _score_slices(model, slices, max(1, int(batch_size)), source)
    full = torch.stack(maps, dim=ax) if ax is not None else maps[0]
    if tuple(full.shape) != spatial:  # the bundle's inversion must restore every slice's size
        raise RuntimeError(f"map shape {tuple(full.shape)} != input spatial shape {spatial} for '{source}'")
    t = float(threshold) if threshold is not None else model.threshold
    pt = float(pixel_threshold) if pixel_threshold is not None else t
    map_np = full.numpy().astype(np.float32)
    mask = (map_np > pt).astype(np.uint8) if np.isfinite(pt) else np.zeros(spatial, dtype=np.uint8)
    if mask_scope == "anomalous_slices" and np.isfinite(t):
        normal = np.asarray(slice_scores) <= t
        if ax is None:
            mask[...] = 0 if normal[0] else mask
        else:
            index: list[Any] = [slice(None)] * 3
            index[ax] = np.flatnonzero(normal)
            mask[tuple(index)] = 0
    score = slice_scores[0] if ax is None else reduce_scores(slice_scores, volume_reduction, top_k)
    return AnomalyResult(
        map=map_np,
        mask=mask,
        score=float(score),
        slice_scores=[float(s) for s in slice_scores],
        threshold=t,
        decision=_decision(float(score), t),
        affine=aff,
        source=source,
        pixel_threshold=pt,
        mask_scope=mask_scope,
        axis=ax,
        volume_reduction=volume_reduction,
        image=data.mean(0).numpy().astype(np.float32),
        model=model.describe(),
    )


def score_image(
    model: BundleModel, image: str | os.PathLike | np.ndarray | torch.Tensor, **kwargs: Any
) -> AnomalyResult:
    """Alias of :func:`score_volume` for readers who score 2D images (a 3D input is still scored slice by slice)."""
    return score_volume(model, image, **kwargs)
