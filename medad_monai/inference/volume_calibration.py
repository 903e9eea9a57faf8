"""Calibrate a bundle's volume threshold on normal volumes and store it in the bundle's weights.

The volumes are scored exactly as serving scores them (:func:`~medad_monai.inference.volume.score_volume` with the
given :class:`~medad_monai.inference.options.ScoringOptions`), and the ``quantile`` of their scores (numpy's linear
interpolation, as the 2D threshold; :func:`~medad_monai.metrics.operating_points.quantile_threshold`) becomes the
threshold that MONAI Label, the MONAI Deploy app and ``score_volume`` decide 3D inputs with
(:mod:`medad_monai.networks.volume_threshold`). The normal volumes must not be the volumes the threshold is then
judged on. From the command line::

    medad-monai calibrate_volumes bundles/ddad /data/normal_volumes --quantile 0.95

The weights are rewritten in place, atomically: ``models/model.pt`` (and ``models/model.ts`` when the bundle has
one, with its embedded configs kept), so the bundle serves the new threshold without a re-export.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medad_monai.inference.bundle_model import BundleModel
from medad_monai.inference.options import ScoringOptions
from medad_monai.inference.volume import _is_dicom_file, score_volume
from medad_monai.io import atomic_path, atomic_torch_save
from medad_monai.metrics.operating_points import quantile_threshold
from medad_monai.networks.volume_threshold import (
    VOLUME_KEY,
    VolumeCalibration,
    set_volume_calibration,
    volume_calibration,
)

__all__ = ["MIN_VOLUMES", "calibrate_volume_threshold", "find_volumes", "store_volume_calibration"]

logger = logging.getLogger("medad_monai")

# a quantile of fewer normal volumes is little more than their maximum; below this the calibration is refused
MIN_VOLUMES = 3
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _is_series(folder: Path) -> bool:
    return folder.is_dir() and any(f.is_file() and _is_dicom_file(f) for f in folder.iterdir())


def find_volumes(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The volumes named by ``paths``: a file is one volume; a folder gives each NIfTI/NRRD/MetaImage file in it and
    each DICOM series folder (itself or a sub-folder holding ``.dcm`` files), in sorted order.

    Raises:
        FileNotFoundError: naming a path that does not exist, or a folder that holds no volume.
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item).expanduser()
        if p.is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"normal volume '{p}' does not exist")
        inside = sorted(f for f in p.iterdir() if _is_volume_file(f))
        series = sorted(d for d in [p, *p.iterdir()] if _is_series(d))
        if not inside and not series:
            raise FileNotFoundError(
                f"folder '{p}' holds no volume (NIfTI, NRRD or MetaImage files, or DICOM series folders)"
            )
        found.extend(inside + series)
    return found


def calibrate_volume_threshold(
    model: BundleModel,
    volumes: Sequence[str | os.PathLike | np.ndarray],
    options: ScoringOptions | None = None,
    quantile: float = 0.95,
) -> tuple[VolumeCalibration, list[tuple[str, float]]]:
    """Score the normal ``volumes`` as serving does and set ``model``'s volume threshold to their ``quantile``.

    Returns:
        the calibration (also stored in ``model.network``; :func:`store_volume_calibration` writes it to the bundle)
        and each volume's ``(source, score)``.

    Raises:
        ValueError: a 2D input among the volumes (naming it), fewer than :data:`MIN_VOLUMES` volumes, or a quantile
            outside ``(0, 1]``.
    """
    opts = options or ScoringOptions()
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if len(volumes) < MIN_VOLUMES:
        raise ValueError(f"a volume threshold needs at least {MIN_VOLUMES} normal volumes, got {len(volumes)}")
    scores: list[tuple[str, float]] = []
    for volume in volumes:
        # the decision is not needed here: a NaN override keeps any stored volume threshold out of the scoring
        result = score_volume(model, volume, threshold=float("nan"), **opts.as_kwargs())
        if result.axis is None:
            raise ValueError(f"'{result.source}' is a 2D image, not a volume: it cannot calibrate a volume threshold")
        scores.append((result.source, result.score))
        logger.info(f"normal volume {result.source}: score {result.score:.6g} ({len(result.scored_slices)} slices)")
    value = quantile_threshold(np.array([s for _, s in scores]), quantile)
    calibration = VolumeCalibration(
        threshold=value,
        quantile=float(quantile),
        num_volumes=len(scores),
        axis=opts.axis % 3,
        volume_reduction=opts.volume_reduction,
        top_k=opts.top_k,
        min_relative_body=float(opts.min_relative_body),
    )
    set_volume_calibration(model.network, calibration)
    return volume_calibration(model.network) or calibration, scores  # as stored (a TorchScript buffer may round)


def _update_checkpoint(path: Path, value: torch.Tensor) -> None:
    """Set the ``volume_calibration`` entry of a ``torch.save``d state dict (at the prefix of its ``threshold``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint '{path}' is not a state dict")
    prefixes = [k[: -len("threshold")] for k in weights if k == "threshold" or k.endswith(".threshold")]
    if len(prefixes) != 1:
        raise ValueError(f"checkpoint '{path}' has {len(prefixes)} 'threshold' entries: not one anomaly network")
    weights[prefixes[0] + VOLUME_KEY] = value
    atomic_torch_save(state, path)


def _torchscript_with(path: Path, value: torch.Tensor) -> bytes:
    """The TorchScript file ``path`` with its ``volume_calibration`` buffer set, as bytes (the files ``ckpt_export``
    embedded are kept)."""
    with zipfile.ZipFile(path) as archive:  # embedded files live under "<archive>/extra/<name>"
        names = [n.split("/extra/", 1)[1] for n in archive.namelist() if "/extra/" in n]
    extra = dict.fromkeys(names, "")
    module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    buffer = getattr(module, VOLUME_KEY, None)
    if not isinstance(buffer, torch.Tensor):
        raise ValueError(f"TorchScript model '{path}' has no {VOLUME_KEY!r} buffer: re-export it with ckpt_export")
    buffer.copy_(value.to(buffer.dtype))
    data = io.BytesIO()
    torch.jit.save(module, data, _extra_files=extra)
    return data.getvalue()


def store_volume_calibration(bundle: str | os.PathLike, calibration: VolumeCalibration) -> list[Path]:
    """Write ``calibration`` into the bundle's ``models/model.pt`` and ``models/model.ts`` (those that exist),
    each atomically, and neither when either cannot take it; returns the files written.

    Raises:
        FileNotFoundError: the bundle has neither file.
        ValueError: a file is not an anomaly network's (a TorchScript export from before the buffer, say).
    """
    models = Path(bundle) / "models"
    value = calibration.to_tensor()
    pt, ts = models / "model.pt", models / "model.ts"
    if not pt.is_file() and not ts.is_file():
        raise FileNotFoundError(f"bundle '{bundle}': no models/model.pt or models/model.ts to store the threshold in")
    ts_bytes = _torchscript_with(ts, value) if ts.is_file() else None  # checked before anything is written
    written: list[Path] = []
    if pt.is_file():
        _update_checkpoint(pt, value)
        written.append(pt)
    if ts_bytes is not None:
        with atomic_path(ts) as tmp:
            tmp.write_bytes(ts_bytes)
        written.append(ts)
    return written
