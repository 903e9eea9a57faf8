"""MONAI dictionary transforms for anomaly detection.

Loading with errors that name the file, each method's channel policy, mask checks, DDAD's synthetic patch anomalies
(Cai et al., MedIA 2023, §3.4) and the postprocessing that turns an anomaly map into an image score and a decision.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform
from PIL import Image
from torch import nn

from medad_monai.io import atomic_path, file_stem
from medad_monai.scores import decision, image_score, score_reduction

__all__ = [
    "INTENSITY_POLICIES",
    "INTENSITY_WINDOW_KEY",
    "AnomalyScored",
    "ChannelPolicyd",
    "CheckMaskSized",
    "ImageReadError",
    "IntensityPolicyd",
    "LoadAnomalyImaged",
    "RandPatchBlendAnomalyd",
    "SaveAnomalyMapd",
    "ThresholdDecisiond",
    "image_source",
    "storage_range",
]

# ITU-R BT.601 luma weights: how RGB (screenshots, JPEG exports of radiographs) becomes one channel.
_LUMA = (0.299, 0.587, 0.114)


class ImageReadError(RuntimeError):
    """An input image could not be read or does not fit the pipeline; the message names the file."""


def image_source(value: Any) -> str:
    """The file an image came from, as far as its metadata knows."""
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", "<in-memory image>"))
    return "<in-memory image>"


class LoadAnomalyImaged(MapTransform):
    """``LoadImaged`` (channel first) that reports unreadable files by name and flattens 2D images.

    PNG/JPEG (8/16 bit, grayscale or RGB), DICOM and NIfTI are read by MONAI's readers. A 2D image stored as
    ``(H, W, 1)`` (e.g. a one-slice NIfTI) is squeezed to 2D; a true 3D volume in a 2D pipeline is an error that
    says what to do.

    Args:
        keys: keys of the image (and mask) paths.
        allow_missing_keys: skip absent keys (e.g. ``mask`` on normal images).
        spatial_dims: spatial dimensions the pipeline expects (2 for the bundles' 2D networks).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, spatial_dims: int = 2) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.loader = LoadImaged(keys, image_only=True, ensure_channel_first=True, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            try:
                img = self.loader({key: path})[key]
            except Exception as e:  # readers raise many types; the user needs the file and the reason
                raise ImageReadError(f"cannot read {key} file '{path}': {type(e).__name__}: {e}") from e
            while img.ndim > self.spatial_dims + 1 and img.shape[-1] == 1:
                img = img[..., 0]
            if img.ndim != self.spatial_dims + 1:
                raise ImageReadError(
                    f"{key} file '{path}' has shape {tuple(img.shape[1:])} (channels first: {tuple(img.shape)}), "
                    f"not a {self.spatial_dims}D image; score 3D volumes slice by slice (see the MONAI Label and "
                    "Deploy integrations) or export 2D slices"
                )
            if not torch.isfinite(img).all():
                raise ImageReadError(f"{key} file '{path}' contains NaN or infinite values")
            d[key] = uniform_meta(img)
        return d


def uniform_meta(img: torch.Tensor) -> torch.Tensor:
    """Keep only the metadata every reader provides, in one form, so that images of mixed formats collate.

    PNG, DICOM and NIfTI readers give different keys (PNG ``width``/``height``, DICOM tags and ``spacing``, NIfTI
    header fields), and a one-slice DICOM a 3D ``spatial_shape``; a batch mixing them (reviewed normals from a
    datastore of PNG and DICOM studies) fails to collate on the first key whose shapes differ. What the pipeline
    reads is kept: the source file, the affine (and the reader's original one), the spatial shape of the (squeezed)
    image, the space and the original channel dimension.
    """
    if not isinstance(img, MetaTensor):
        return img
    meta = img.meta
    affine = np.asarray(img.affine.detach().cpu().numpy(), dtype=np.float64)
    channel_dim = meta.get("original_channel_dim", float("nan"))
    img.meta = {
        "filename_or_obj": meta.get("filename_or_obj", "<in-memory image>"),
        "affine": img.affine,
        "original_affine": np.asarray(meta.get("original_affine", affine), dtype=np.float64),
        "spatial_shape": np.asarray(img.shape[1:], dtype=np.int64),
        "space": str(meta.get("space", "RAS")),
        "original_channel_dim": float(channel_dim) if isinstance(channel_dim, (int, float)) else float("nan"),
    }
    return img


class ChannelPolicyd(MapTransform):
    """Bring images to the channel count a method expects.

    ``channels=1`` (DDAD): RGB(A) becomes luma (BT.601), alpha dropped. ``channels=3`` (WideResNet/VMamba
    teachers): grayscale is replicated to 3 channels, alpha dropped. Anything else is an error naming the file.
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            c = img.shape[0]
            if c == 4:  # RGBA: alpha is not image content
                img, c = img[:3], 3
            if c not in (1, 3):
                raise ImageReadError(f"{key} '{image_source(img)}' has {c} channels; expected grayscale or RGB")
            if self.channels == 1 and c == 3:
                w = torch.as_tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, *([1] * (img.ndim - 1)))
                img = (img * w).sum(0, keepdim=True)
            elif self.channels == 3 and c == 1:
                img = img.repeat(3, *([1] * (img.ndim - 1)))
            d[key] = img
        return d


INTENSITY_POLICIES = ("auto", "minmax", "percentile", "fixed")
# metadata key of a window computed elsewhere (the whole volume's, for one of its slices): (low, high, clip)
INTENSITY_WINDOW_KEY = "medad_intensity_window"
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# PIL modes of integer rasters and the range their pixels are stored in
_PIL_MODE_RANGE = {"1": (0.0, 1.0), "L": (0.0, 255.0), "LA": (0.0, 255.0), "P": (0.0, 255.0), "RGB": (0.0, 255.0)}
_PIL_MODE_RANGE.update({"RGBA": (0.0, 255.0), "I;16": (0.0, 65535.0), "I;16B": (0.0, 65535.0), "I;16L": (0.0, 65535.0)})


@lru_cache(maxsize=4096)
def storage_range(path: str) -> tuple[float, float] | None:
    """The fixed intensity range an image file defines, read from its header (no pixel data is decoded).

    Memoised by (path, modification time, size): the policy asks once per image and epoch, and once per slice of a
    volume, so the header is read once.

    * 8- and 16-bit PNG/JPEG/BMP/TIFF: the range of their bit depth, ``(0, 255)`` or ``(0, 65535)``;
    * DICOM with a VOI window (``WindowCenter``/``WindowWidth``, first value): ``center -/+ width / 2``, the window
      a viewer shows (applied to the rescaled values MONAI's reader returns);
    * anything else (NIfTI, float TIFF, DICOM without a window, a folder, an in-memory array): ``None``.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # an in-memory image's placeholder name, a missing file
        return None
    return _storage_range(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4096)
def _storage_range(path: str, mtime_ns: int, size: int) -> tuple[float, float] | None:
    """:func:`storage_range` read from the file; ``mtime_ns`` and ``size`` only key the cache."""
    name = path.lower()
    try:
        if name.endswith(_RASTER_SUFFIXES):
            with Image.open(path) as im:
                return _PIL_MODE_RANGE.get(im.mode)
        if name.endswith((".dcm", ".dicom")) or (os.path.isfile(path) and not os.path.splitext(name)[1]):
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
            if center is None or width is None:
                return None
            first = [v[0] if isinstance(v, pydicom.multival.MultiValue) else v for v in (center, width)]
            c, w = float(first[0]), float(first[1])
            return (c - w / 2, c + w / 2) if w > 0 else None
    except Exception:  # an unreadable header: the loader has already named the file; fall back to per-image scaling
        return None
    return None


class IntensityPolicyd(MapTransform):
    """Scale intensities to ``[minv, maxv]`` by a policy that keeps what the stored values mean.

    The official codes of DDAD and D²4FAD read 8-bit images and scale them by the fixed range ``[0, 255]``; scaling
    each image by its own minimum and maximum instead lets a bright lesion (or an empty corner) rescale the whole
    image. Policies:

    * ``"auto"`` (default): the file's :func:`storage_range` (8/16-bit rasters by their bit depth, DICOM by its VOI
      window) when it has one, else per-image min-max (NIfTI and other float data, whose range is not fixed);
    * ``"minmax"``: per-image min-max;
    * ``"percentile"``: per-image ``[lower, upper]`` percentile window, clipped (robust to a few outliers);
    * ``"fixed"``: the given ``fixed_range`` (e.g. a CT window in HU), clipped.

    Values outside a fixed range or window are clipped to ``[minv, maxv]``. A constant image maps to ``minv``.

    Args:
        keys: image keys.
        minv, maxv: output range.
        policy: one of :data:`INTENSITY_POLICIES`.
        lower, upper: percentiles of ``"percentile"``.
        fixed_range: ``(low, high)`` of ``"fixed"``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        minv: float = 0.0,
        maxv: float = 1.0,
        policy: str = "auto",
        lower: float = 0.5,
        upper: float = 99.5,
        fixed_range: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if policy not in INTENSITY_POLICIES:
            raise ValueError(f"intensity policy must be one of {INTENSITY_POLICIES}, got {policy!r}")
        if policy == "fixed" and (fixed_range is None or len(fixed_range) != 2 or fixed_range[1] <= fixed_range[0]):
            raise ValueError(
                f"intensity policy 'fixed' needs fixed_range=(low, high) with low < high, got {fixed_range}"
            )
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.minv, self.maxv, self.policy = float(minv), float(maxv), policy
        self.lower, self.upper = float(lower), float(upper)
        self.fixed_range = None if fixed_range is None else (float(fixed_range[0]), float(fixed_range[1]))

    def window(self, img: torch.Tensor) -> tuple[float, float, bool]:
        """``(low, high, clip)``: the input range mapped to ``[minv, maxv]`` for this image.

        A slice of a volume carries the window of its whole volume in its metadata (``INTENSITY_WINDOW_KEY``, set by
        :func:`~medad_monai.inference.volume.score_volume`), so that every slice is scaled as the volume is."""
        if self.policy == "fixed":
            assert self.fixed_range is not None
            return (*self.fixed_range, True)
        given = img.meta.get(INTENSITY_WINDOW_KEY) if isinstance(img, MetaTensor) else None
        if given is not None:
            return float(given[0]), float(given[1]), bool(given[2])
        if self.policy == "auto":
            stored = storage_range(image_source(img)) if isinstance(img, MetaTensor) else None
            if stored is not None:
                return (*stored, True)
        flat = torch.as_tensor(img).detach().float().flatten()
        if self.policy == "percentile":
            flat = flat[:: flat.numel() // 2**24 + 1]  # torch.quantile's input limit; a whole volume may exceed it
            q = torch.quantile(flat, torch.tensor([self.lower / 100, self.upper / 100]))
            return float(q[0]), float(q[1]), True
        return float(flat.min()), float(flat.max()), False

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            low, high, clip = self.window(img)
            if high <= low:  # a constant image (or window): nothing to stretch
                d[key] = torch.as_tensor(img) * 0 + self.minv
                continue
            out = (img - low) * ((self.maxv - self.minv) / (high - low)) + self.minv
            d[key] = out.clamp(self.minv, self.maxv) if clip else out
        return d


class CheckMaskSized(MapTransform):
    """Check that a mask has the spatial size of its image (run right after loading, before resizing).

    A mask of another size is an error naming both files; the mask is binarised to one channel otherwise. Items
    without a mask (normal images) get an all-zero mask when ``fill_missing``, so that batches mixing normal and
    anomalous images collate.
    """

    def __init__(self, image_key: str = "image", mask_key: str = "mask", fill_missing: bool = True) -> None:
        super().__init__([mask_key], allow_missing_keys=True)
        self.image_key, self.mask_key, self.fill_missing = image_key, mask_key, fill_missing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key not in d:
            if self.fill_missing:
                img = d[self.image_key]
                d[self.mask_key] = MetaTensor(
                    torch.zeros((1, *img.shape[1:]), dtype=torch.float32), affine=getattr(img, "affine", None)
                )
            return d
        img, mask = d[self.image_key], d[self.mask_key]
        if tuple(img.shape[1:]) != tuple(mask.shape[1:]):
            raise ImageReadError(
                f"mask '{image_source(mask)}' has size {tuple(mask.shape[1:])} but its image "
                f"'{image_source(img)}' has size {tuple(img.shape[1:])}"
            )
        d[self.mask_key] = (mask.amax(0, keepdim=True) > 0).to(torch.float32)
        return d


class RandPatchBlendAnomalyd(RandomizableTransform, MapTransform):
    """DDAD's self-supervised anomaly: blend a square patch of another normal image into this one (MedIA 2023 §3.4).

    With probability ``prob``: a centre uniform in the central ``core_fraction`` of the image, a half-width uniform
    in ``[round(min_half_width * W), round(max_half_width * W))`` pixels, one ``alpha ~ U(0, 1)`` for the patch;
    ``image = (1 - alpha * m) * image + alpha * m * source`` with ``m`` the square, and the target mask is the square
    (as the official ``SelfAnomalyDataset.generate_anomaly``). Otherwise the mask is empty.

    Args:
        image_key: image to corrupt (C, H, W).
        source_key: another normal image of the same size (provided by :class:`~medad_monai.data.PartnerDataset`).
        mask_key, label_key: outputs: the target mask (1, H, W) float {0, 1} and the image label (0/1).
        source_location: ``"same"`` (the paper: the patch comes from the same place in the source image) or
            ``"random"`` (from a random place of the source: visible on spatially aligned data, where the same
            place of another normal looks normal).
    """

    def __init__(
        self,
        image_key: str = "image",
        source_key: str = "source",
        mask_key: str = "mask",
        label_key: str = "label",
        prob: float = 0.5,
        core_fraction: float = 0.8,
        min_half_width: float = 0.05,
        max_half_width: float = 0.2,
        source_location: str = "same",
    ) -> None:
        if source_location not in ("same", "random"):
            raise ValueError(f"source_location must be 'same' or 'random', got {source_location!r}")
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.source_key = image_key, source_key
        self.mask_key, self.label_key = mask_key, label_key
        self.core_fraction, self.min_half_width, self.max_half_width = core_fraction, min_half_width, max_half_width
        self.source_location = source_location

    def sample_box(self, h: int, w: int) -> tuple[int, int, int, int, float]:
        """Random (y0, y1, x0, x1, alpha) of the patch, clipped to the image."""
        off_y, off_x = (1 - self.core_fraction) * h / 2, (1 - self.core_fraction) * w / 2
        cy = int(self.R.randint(int(off_y), int(off_y + self.core_fraction * h)))
        cx = int(self.R.randint(int(off_x), int(off_x + self.core_fraction * w)))
        lo, hi = int(round(self.min_half_width * w)), int(round(self.max_half_width * w))
        half = int(self.R.randint(lo, max(hi, lo + 1)))
        alpha = float(self.R.uniform(0.0, 1.0))
        return max(cy - half, 0), min(cy + half, h), max(cx - half, 0), min(cx + half, w), alpha

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d[self.image_key]
        self.randomize(None)
        mask = torch.zeros((1, *img.shape[1:]), dtype=torch.float32)
        if self._do_transform:
            source = d[self.source_key]
            if tuple(source.shape) != tuple(img.shape):
                raise ValueError(f"source image shape {tuple(source.shape)} != image shape {tuple(img.shape)}")
            h, w = img.shape[-2], img.shape[-1]
            y0, y1, x0, x1, alpha = self.sample_box(h, w)
            source = torch.as_tensor(source)
            if self.source_location == "random":  # move a random source window of the same size onto the box
                sy = int(self.R.randint(0, h - (y1 - y0) + 1))
                sx = int(self.R.randint(0, w - (x1 - x0) + 1))
                source = torch.roll(source, shifts=(y0 - sy, x0 - sx), dims=(-2, -1))
            blend = torch.zeros_like(mask)
            blend[:, y0:y1, x0:x1] = alpha
            img = (1 - blend) * img + blend * source
            mask = (blend > 0).to(torch.float32)
        d[self.image_key] = img
        d[self.mask_key] = mask
        d[self.label_key] = int(mask.any())
        d.pop(self.source_key, None)
        return d


class AnomalyScored(MapTransform):
    """Image score of an anomaly map (:func:`medad_monai.scores.image_score`) with the reduction its network states
    (``max`` for D²4FAD and PDD, ``mean`` for DDAD), read from ``network`` when the transform runs.

    Args:
        keys: the map's key.
        network: the network whose maps are scored (its ``score_reduction``).
        score_key: where the score is stored.
    """

    def __init__(
        self, keys: KeysCollection = "pred", network: nn.Module | None = None, score_key: str = "score"
    ) -> None:
        super().__init__(keys)
        if network is None:
            raise ValueError("AnomalyScored needs the network whose maps it scores (its score_reduction)")
        self.network, self.score_key = network, score_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reduction = score_reduction(self.network)
        for key in self.key_iterator(d):
            d[self.score_key] = image_score(torch.as_tensor(d[key]).float()[None], reduction)[0]
        return d


class ThresholdDecisiond(MapTransform):
    """Decision ``score > threshold`` with the threshold read from the network's ``threshold`` buffer at call time.

    Reading the buffer when the transform runs (not when the config is parsed) means the value calibrated during
    training and loaded from ``model.pt`` is the one used.
    """

    def __init__(self, network: nn.Module, score_key: str = "score", decision_key: str = "decision") -> None:
        super().__init__([score_key])
        self.network, self.score_key, self.decision_key = network, score_key, decision_key
        self._warned = False

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        threshold = float(self.network.threshold)
        if not np.isfinite(threshold) and not self._warned:  # an incomplete model: say so once, loudly
            logging.getLogger("medad_monai").warning(
                "the model has no calibrated threshold (NaN): every decision is -1 (undecided). Its training did not "
                "finish the calibration on validation normals; retrain it (or calibrate) before relying on decisions."
            )
            self._warned = True
        d["threshold"] = threshold
        d[self.decision_key] = decision(float(d[self.score_key]), threshold)
        return d


class SaveAnomalyMapd(MapTransform):
    """Write each anomaly map as float32 NIfTI ``<output_dir>/<source stem>_<postfix>.nii.gz``, atomically.

    Names never collide within a run: a second source with the same stem (``a/x.png`` and ``b/x.png``, or ``x.dcm``
    and ``x.nii.gz``) gets ``<stem>_<8 hex digits of its path's SHA-1>_<postfix>.nii.gz``, so no map overwrites
    another and each CSV row points to its own file. The map keeps the affine of its (inverted, i.e.
    original-geometry) MetaTensor, so it overlays the input in a viewer. The path is stored under ``<key>_file``.

    ``staging_dir``: write there instead, while ``<key>_file`` names the file in ``output_dir``, where the run's
    outputs are moved together when it completes (:class:`~medad_monai.handlers.run_outputs.RunOutputs`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        postfix: str = "anomaly_map",
        image_key: str = "image",
        staging_dir: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.output_dir, self.postfix, self.image_key = output_dir, postfix, image_key
        self.staging_dir = staging_dir
        self._names: dict[str, str] = {}  # output name -> the source written there in this run

    def output_name(self, source: str) -> str:
        """The file name (without folder) of ``source``'s map; unique among the sources seen by this transform."""
        stem = file_stem(source)
        name = f"{stem}_{self.postfix}.nii.gz"
        if self._names.setdefault(name, source) != source:
            name = f"{stem}_{hashlib.sha1(source.encode()).hexdigest()[:8]}_{self.postfix}.nii.gz"
            self._names.setdefault(name, source)
        return name

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            m = d[key]
            arr = torch.as_tensor(m).detach().cpu().float().numpy()
            arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
            affine = np.asarray(m.affine if isinstance(m, MetaTensor) else np.eye(4), dtype=np.float64)
            name = self.output_name(image_source(d.get(self.image_key, m)))
            nifti = nib.Nifti1Image(arr.astype(np.float32), affine)
            with atomic_path(os.path.join(self.staging_dir or self.output_dir, name)) as tmp:
                tmp.write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=6))
            d[f"{key}_file"] = os.path.join(self.output_dir, name)
        return d
