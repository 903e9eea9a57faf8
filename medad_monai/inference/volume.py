"""Score a 2D image or a 3D volume with a 2D anomaly bundle, slice by slice, keeping the input's geometry.

For each 2D slice along ``axis`` the bundle's own per-image transforms run (``BundleModel.image_transforms``: the
config's channel policy, resize to the network size and intensity scaling), the network runs on batches of slices,
each slice's score is its network's reduction (:mod:`medad_monai.scores`: mean for DDAD, max for the others) of its
network-resolution map, exactly as the bundle's ``postprocessing`` computes it, and each map is brought back to the
slice's size with MONAI's ``Invertd`` on the bundle's transforms (as the config's ``Invertd`` does). The slice maps
are stacked into a map with exactly the input's spatial shape and affine.

A volume is scaled once, as the bundle's preprocessing would scale the whole image: the bundle's intensity policy
(``IntensityPolicyd``) computes one window over the volume (its stored DICOM window, the volume's min-max for
NIfTI, or its percentiles) and every slice is scaled by it, so a slice holding little of the volume's range stays
dark instead of being stretched to the full range.

Only the slices that show as much body as the model knows are scored: a voxel is foreground when its scaled
intensity exceeds ``foreground_threshold`` (holes filled per slice, so dark lesions inside the body count), and a
slice is scored when its foreground fraction reaches the model's body extent, recorded at calibration from its
normals (``body_fraction``: 0.8 times their 5% quantile; a model without one scores the slices with at least half
the largest slice's foreground), and ``min_relative_body`` (default 0.9) of the volume's largest slice's. The second
rule follows the subject: a 2D model trained on full sections has not seen the shrinking sections towards the top of
a head or the ends of an abdomen, whose body is still above the absolute extent of smaller subjects, and scores them
as anomalous, above a lesion in the middle. Excluded slices get a zero map, no label and no score; the volume score
is the ``volume_reduction`` (default ``max``) of the scored slices' scores. Without these rules the top slice of a
head, a section with a few pixels of tissue that looks unlike any training image, outscores a lesion.

A volume is decided with the model's volume threshold when it has one for the scoring options in use (the
``quantile`` of normal volumes' scores, stored by ``medad-monai calibrate_volumes``; see
:mod:`medad_monai.networks.volume_threshold`), else with its 2D threshold, which the maximum over a volume's slices
exceeds more often than one image's score does; ``AnomalyResult.threshold_source`` says which.

MONAI's ``SliceInferer`` was considered: it runs a 2D network over the slices of a tensor at the slices' native size
and cannot apply per-slice preprocessing (resize, channel policy, per-slice scaling) or per-slice scores, which
the 2D bundles need, so the slicing here is explicit and reuses the bundle's transforms instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PydicomReader
from monai.transforms import Compose, Invertd, LoadImage, Resized

from medad_monai.data.foreground import FOREGROUND_THRESHOLD, foreground
from medad_monai.inference.bundle_model import BundleModel
from medad_monai.inference.options import VOLUME_REDUCTIONS, ScoringOptions
from medad_monai.scores import decision
from medad_monai.transforms import INTENSITY_WINDOW_KEY, ImageReadError, IntensityPolicyd

logger = logging.getLogger("medad_monai")

__all__ = [
    "RELATIVE_BODY",
    "AnomalyResult",
    "body_slices",
    "load_input",
    "reduce_scores",
    "score_image",
    "score_volume",
    "select_slices",
    "served_threshold",
    "volume_window",
]

# a model without a recorded body extent scores the slices with at least this fraction of the largest slice's body
RELATIVE_BODY = 0.5
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
            (length 1 for a 2D image; NaN for a slice outside the body, see ``scored_slices``).
        scored_slices: indices of the slices that were scored (inside the body); every slice of a 2D image.
        threshold: the decision threshold used (the model's calibrated one unless overridden); NaN if none.
        threshold_source: where ``threshold`` came from: ``"image"`` (the model's 2D threshold), ``"volume"`` (its
            volume threshold, for a 3D input scored with the options it was calibrated with; see
            :mod:`medad_monai.networks.volume_threshold`) or ``"override"`` (the caller's).
        pixel_threshold: the value ``mask`` was cut at (``threshold`` unless overridden).
        decision: 1 anomalous (``score > threshold``), 0 normal, -1 unknown (threshold NaN: model not calibrated),
            as the bundles' ``ThresholdDecisiond`` and ``scores.csv``.
        affine: 4x4 affine of the input (identity for arrays given without one).
        source: the input path, or ``"<array>"``.
        axis: the slicing axis (None for 2D); volume_reduction: how slice scores became ``score``.
        min_relative_body: the relative body rule the slices were selected with (3D; see :func:`score_volume`).
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
    min_relative_body: float = 0.0
    scored_slices: list[int] = field(default_factory=lambda: [0])
    image: np.ndarray | None = field(default=None, repr=False)
    model: dict[str, Any] = field(default_factory=dict)
    threshold_source: str = "image"

    @property
    def is_anomalous(self) -> bool | None:
        """``True``/``False`` from the decision, ``None`` when the threshold is unknown."""
        return None if self.decision < 0 else bool(self.decision)

    @property
    def top_slice(self) -> int:
        """Index (along ``axis``) of the most anomalous scored slice; 0 for a 2D image."""
        scores = np.asarray(self.slice_scores, dtype=np.float64)
        return int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "source": self.source,
            "score": self.score,
            "threshold": None if not np.isfinite(self.threshold) else self.threshold,
            "threshold_source": self.threshold_source,
            "pixel_threshold": None if not np.isfinite(self.pixel_threshold) else self.pixel_threshold,
            "mask_scope": self.mask_scope,
            "decision": self.decision,
            "calibrated": bool(np.isfinite(self.threshold)),
            "slice_scores": [float(v) if np.isfinite(v) else None for v in self.slice_scores],
            "scored_slices": list(self.scored_slices),
            "top_slice": self.top_slice,
            "axis": self.axis,
            "volume_reduction": self.volume_reduction,
            "min_relative_body": self.min_relative_body,
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


@torch.no_grad()
def _score_slices(
    model: BundleModel,
    slices: list[torch.Tensor],
    batch_size: int,
    source: str,
    window: tuple[float, float, bool] | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """Maps at each slice's own size (``(H, W)`` tensors) and scores, for channel-first 2D slices; ``window``: the
    volume's intensity window every slice is scaled by (``None``: the policy decides per slice, as for a 2D image)."""
    inverter = Invertd(keys="pred", transform=model.image_transforms, orig_keys="image", nearest_interp=False)
    maps: list[torch.Tensor] = []
    scores: list[float] = []
    # the source file travels with each slice, so that the intensity policy reads its stored range (8/16-bit, DICOM
    # window) exactly as the bundle's own loader does
    meta: dict[str, Any] = {"filename_or_obj": source}
    if window is not None:
        meta[INTENSITY_WINDOW_KEY] = window
    for start in range(0, len(slices), batch_size):
        try:
            items = _preprocess_slices(model.image_transforms, slices[start : start + batch_size], meta)
        except Exception as e:  # e.g. a 4D series whose "channels" are time points: name the input
            raise ImageReadError(f"image '{source}' does not fit bundle '{model.root}': {e}") from e
        batch = torch.stack([torch.as_tensor(it["image"]).as_subclass(torch.Tensor) for it in items])
        pred = model.predict(batch)
        if pred.ndim != 4 or pred.shape[1] != 1:
            raise RuntimeError(f"bundle '{model.root}': network returned shape {tuple(pred.shape)}, not (B, 1, H, W)")
        scores.extend(float(v) for v in model.score(pred))
        maps.extend(_invert_maps(inverter, [it["image"] for it in items], pred))
    return maps, scores


def _preprocess_slices(transforms: Compose, slices: list[torch.Tensor], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundle's per-image ``transforms`` applied to each slice, with the resize shared by all of them.

    Resizing (with MONAI's anti-aliasing) dominates the preprocessing of small networks' inputs and treats every
    channel alike, so the slices, once through the transforms before ``Resized``, are stacked along the channel axis
    and resized in one call, then split and finished one by one. Each slice gets the same values and the same trace
    (the resize record, read by ``Invertd``) as when transformed alone. Falls back to one call per slice when the
    chain has no single-key ``Resized`` or the slices differ in shape.
    """
    chain = list(transforms.transforms)
    at = next((i for i, t in enumerate(chain) if isinstance(t, Resized) and len(t.keys) == 1), None)
    if at is None or len(slices) < 2:
        return [transforms({"image": MetaTensor(s.clone(), meta=meta)}) for s in slices]
    items = [Compose(chain[:at])({"image": MetaTensor(s.clone(), meta=meta)}) for s in slices]
    if len({tuple(it["image"].shape) for it in items}) != 1:
        return [Compose(chain[at:])(it) for it in items]
    channels = items[0]["image"].shape[0]
    resized = chain[at]({"image": torch.cat([it["image"] for it in items], dim=0)})["image"]
    finish = Compose(chain[at + 1 :])
    out = []
    for i, it in enumerate(items):
        part = resized[i * channels : (i + 1) * channels]
        image = MetaTensor(part.as_subclass(torch.Tensor).clone(), meta=dict(it["image"].meta))
        image.applied_operations = list(it["image"].applied_operations) + [resized.applied_operations[-1]]
        out.append(finish({**it, "image": image}))
    return out


# Spatial transforms whose inverse reads only its own trace record and treats every channel alike: slices with equal
# records of these alone are inverted as one multi-channel image (one interpolation instead of one per slice).
_CHANNELWISE_INVERSES = frozenset(
    {
        "Resize",
        "SpatialPad",
        "BorderPad",
        "DivisiblePad",
        "CenterSpatialCrop",
        "SpatialCrop",
        "ResizeWithPadOrCrop",
        "Flip",
        "Rotate90",
        "Zoom",
    }
)


def _inversion_key(image: Any) -> tuple[Any, ...] | None:
    """What the inversion of ``image``'s transforms depends on, or ``None`` when it cannot be shared with other
    slices (a transform outside :data:`_CHANNELWISE_INVERSES`)."""
    key = []
    for op in getattr(image, "applied_operations", []):
        if op.get("class") not in _CHANNELWISE_INVERSES:
            return None
        key.append((op["class"], tuple(int(v) for v in op.get("orig_size", ())), repr(op.get("extra_info"))))
    return tuple(key)


def _invert_maps(inverter: Invertd, images: list[Any], preds: torch.Tensor) -> list[torch.Tensor]:
    """The ``(B, 1, h, w)`` network maps ``preds`` of the preprocessed ``images`` brought back to each slice's size.

    Slices whose transforms are inverted alike (same :func:`_inversion_key`: the slices of one volume) go through
    ``Invertd`` once, stacked along the channel axis; any other slice is inverted on its own, as before.
    """
    keys = [_inversion_key(image) for image in images]
    out: list[torch.Tensor | None] = [None] * len(images)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        if key is None:
            inverted = inverter({"image": images[i], "pred": MetaTensor(preds[i])})["pred"]
            out[i] = torch.as_tensor(inverted).as_subclass(torch.Tensor).float()[0]
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        stacked = MetaTensor(torch.cat([preds[i] for i in members], dim=0))
        inverted = torch.as_tensor(inverter({"image": images[members[0]], "pred": stacked})["pred"])
        for channel, i in enumerate(members):
            out[i] = inverted.as_subclass(torch.Tensor).float()[channel]
    return [m for m in out if m is not None]


def volume_window(model: BundleModel, data: torch.Tensor, source: str) -> tuple[float, float, bool] | None:
    """The intensity window ``(low, high, clip)`` the bundle's ``IntensityPolicyd`` gives the whole volume ``data``
    (channel first); ``None`` when the bundle has no such transform (its own scaling then runs per slice)."""
    policy = next((t for t in model.image_transforms.transforms if isinstance(t, IntensityPolicyd)), None)
    if policy is None:
        return None
    return policy.window(MetaTensor(data, meta={"filename_or_obj": source}))


def body_slices(
    data: torch.Tensor,
    axis: int,
    window: tuple[float, float, bool] | None,
    min_fraction: float | None = None,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    min_relative: float = 0.0,
) -> tuple[np.ndarray, list[int]]:
    """Foreground voxels and the slices inside the body of a channel-first volume.

    A voxel is foreground when its intensity, scaled to [0, 1] by ``window`` (default the volume's min-max), exceeds
    ``foreground_threshold``; holes are filled slice by slice (:func:`~medad_monai.data.foreground.foreground`). A
    slice is inside the body when its foreground fraction is at least ``min_fraction`` (the model's body extent,
    see :mod:`medad_monai.networks.body_extent`; ``0``: every slice with any foreground) or, when that is ``None``,
    at least :data:`RELATIVE_BODY` times the largest slice's; and, in every case, at least ``min_relative`` times the
    largest slice's.

    Returns:
        the boolean foreground (spatial shape) and the sorted indices (along ``axis``) of the slices inside the body.
    """
    for name, value in (("minimum body fraction", min_fraction), ("minimum relative body", min_relative)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"the {name} of a slice must be in [0, 1], got {value}")
    vol = np.moveaxis(data.float().mean(0).numpy(), axis, 0)
    low, high = (window[0], window[1]) if window is not None else (float(vol.min()), float(vol.max()))
    fg = foreground(vol, (low, high), foreground_threshold)  # holes filled slice by slice, in one call
    area = fg.reshape(fg.shape[0], -1).mean(1)
    least = max(RELATIVE_BODY * area.max() if min_fraction is None else min_fraction, min_relative * area.max())
    keep = np.flatnonzero((area > 0) & (area >= least))
    return np.moveaxis(fg, 0, axis), [int(i) for i in keep]


def select_slices(
    model: BundleModel,
    data: torch.Tensor,
    axis: int,
    source: str = "<array>",
    min_body_fraction: float | None = None,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    min_relative_body: float = 0.0,
) -> tuple[tuple[float, float, bool] | None, np.ndarray, list[int]]:
    """What :func:`score_volume` scores of a channel-first volume: its intensity window (:func:`volume_window`), its
    foreground and the slices inside the body (:func:`body_slices`, by default at the model's body extent)."""
    window = volume_window(model, data, source)
    least = model.body_fraction if min_body_fraction is None else float(min_body_fraction)
    foreground, scored = body_slices(
        data, axis, window, least if np.isfinite(least) else None, foreground_threshold, min_relative_body
    )
    return window, foreground, scored


def served_threshold(model: BundleModel, options: ScoringOptions, volume: bool) -> tuple[float, str]:
    """The threshold a ``volume`` (else a 2D image) scored with ``options`` is decided with, and its source:
    the model's volume threshold (``"volume"``) when it has one calibrated with these options, else its 2D
    threshold (``"image"``; a warning says why when a volume threshold exists for other options)."""
    calibration = model.volume_calibration if volume else None
    if calibration is None:
        return model.threshold, "image"
    if calibration.holds_for(options.axis, options.volume_reduction, options.top_k, options.min_relative_body):
        return calibration.threshold, "volume"
    logger.warning(
        f"bundle '{model.root}': its volume threshold was calibrated with axis {calibration.axis}, "
        f"{calibration.volume_reduction} (top_k {calibration.top_k}), min_relative_body "
        f"{calibration.min_relative_body:g}; scored with axis {options.axis}, {options.volume_reduction} (top_k "
        f"{options.top_k}), min_relative_body {options.min_relative_body:g}, this volume is decided with the image "
        "threshold"
    )
    return model.threshold, "image"


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
    min_body_fraction: float | None = None,
    foreground_threshold: float = FOREGROUND_THRESHOLD,
    min_relative_body: float = 0.9,
) -> AnomalyResult:
    """Score a 2D image or a 3D volume with a 2D bundle.

    Args:
        model: from :func:`~medad_monai.inference.load_bundle_model`.
        image: a path (NIfTI 2D/3D, DICOM file, DICOM series folder, PNG/JPEG), a channel-first ``MetaTensor``
            (as ``LoadImage`` gives), or a spatial-only array ``(X, Y)`` / ``(X, Y, Z)``.
        affine: the array's 4x4 (or 2D 3x3) affine; default the MetaTensor's or the file's, else identity.
        axis: spatial axis (0, 1, 2) sliced for 3D inputs; ignored for 2D. Default 2 (axial for RAS NIfTI).
        volume_reduction: ``max`` (default), ``mean`` or ``topk`` of the slice scores; ``top_k`` for ``topk``.
        threshold: overrides the model's calibrated threshold for the decision (and the mask). Default: for a 3D
            input, the model's volume threshold when it was calibrated with these options (:func:`served_threshold`),
            else (and for 2D) its image threshold.
        pixel_threshold: overrides the value the map is cut at for ``mask`` (default: ``threshold``). The stored
            threshold is calibrated on image scores; for ``max``-reduced bundles a pixel above it is exactly what
            makes the image anomalous, for ``mean``-reduced ones (DDAD) it marks the pixels above the mean level.
        mask_scope: ``"anomalous_slices"`` (default): the mask is kept only in slices (for 2D: the image) whose own
            score exceeds the threshold, so the label agrees with the decision; for ``max``-reduced bundles this
            changes nothing (no pixel of a normal slice exceeds the threshold), for ``mean``-reduced ones it keeps
            normal slices free of above-average pixels. ``"all"``: every pixel above ``pixel_threshold``.
        batch_size: slices per network call.
        min_body_fraction: the least foreground fraction of a scored slice (3D inputs only); default the model's
            recorded body extent (the body its calibration normals show), or, for a model without one,
            :data:`RELATIVE_BODY` of the largest slice's. Slices below it get no score, no map and no label.
        foreground_threshold: which voxels are foreground (:func:`body_slices`).
        min_relative_body: the least body of a scored slice as a fraction of the volume's largest slice's (3D inputs
            only; default 0.9: the levels of full sections); ``0`` keeps only the absolute rule above.

    Raises:
        ImageReadError: naming the file, when it cannot be read or holds non-finite values.
    """
    # one validation of the scoring options (medad_monai.inference.options), whichever caller passed them
    opts = ScoringOptions(axis, volume_reduction, int(top_k), int(batch_size), mask_scope, min_relative_body)
    data, aff, source = _as_input(image, affine)
    spatial = tuple(data.shape[1:])
    if threshold is not None:
        t, t_source = float(threshold), "override"
    else:
        t, t_source = served_threshold(model, opts, volume=len(spatial) == 3)
    pt = float(pixel_threshold) if pixel_threshold is not None else t
    if len(spatial) == 2:  # a 2D image: scored as the bundle's own inference scores it
        ax, scored = None, [0]
        maps, slice_scores = _score_slices(model, [data], opts.batch_size, source)
        map_np = maps[0].numpy().astype(np.float32)
        foreground = np.ones(spatial, dtype=bool)
    else:
        ax = opts.axis % 3
        window, foreground, scored = select_slices(
            model, data, ax, source, min_body_fraction, foreground_threshold, opts.min_relative_body
        )
        if not scored:
            raise ImageReadError(f"image '{source}' has no foreground: every voxel is at or below its background level")
        slices = [data.select(ax + 1, i) for i in scored]
        maps, scores = _score_slices(model, slices, opts.batch_size, source, window)
        map_np = np.zeros(spatial, dtype=np.float32)  # slices outside the body: no map
        index: list[Any] = [slice(None)] * 3
        index[ax] = scored
        map_np[tuple(index)] = torch.stack(maps, dim=ax).numpy().astype(np.float32)
        slice_scores = [float("nan")] * spatial[ax]
        for i, v in zip(scored, scores):
            slice_scores[i] = v
    if map_np.shape != spatial:  # the bundle's inversion must restore every slice's size
        raise RuntimeError(f"map shape {map_np.shape} != input spatial shape {spatial} for '{source}'")
    mask = (map_np > pt).astype(np.uint8) if np.isfinite(pt) else np.zeros(spatial, dtype=np.uint8)
    mask &= foreground.astype(np.uint8)
    if mask_scope == "anomalous_slices" and np.isfinite(t):
        normal = ~(np.asarray(slice_scores) > t)  # NaN (outside the body) counts as normal
        if ax is None:
            mask[...] = 0 if normal[0] else mask
        else:
            index = [slice(None)] * 3
            index[ax] = np.flatnonzero(normal)
            mask[tuple(index)] = 0
    kept = [slice_scores[i] for i in scored]
    score = kept[0] if ax is None else reduce_scores(kept, opts.volume_reduction, opts.top_k)
    return AnomalyResult(
        map=map_np,
        mask=mask,
        score=float(score),
        slice_scores=[float(s) for s in slice_scores],
        threshold=t,
        decision=decision(float(score), t),
        affine=aff,
        source=source,
        pixel_threshold=pt,
        mask_scope=mask_scope,
        axis=ax,
        volume_reduction=volume_reduction,
        min_relative_body=float(opts.min_relative_body) if ax is not None else 0.0,
        scored_slices=scored,
        image=data.mean(0).numpy().astype(np.float32),
        model=model.describe(),
        threshold_source=t_source,
    )


def score_image(
    model: BundleModel, image: str | os.PathLike | np.ndarray | torch.Tensor, **kwargs: Any
) -> AnomalyResult:
    """Alias of :func:`score_volume` for readers who score 2D images (a 3D input is still scored slice by slice)."""
    return score_volume(model, image, **kwargs)
