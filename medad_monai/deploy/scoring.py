"""Score one study with the serving core (:func:`medad_monai.inference.score_volume`), keeping the float map.

Reading goes through the core's :func:`~medad_monai.inference.load_input` (MONAI ``LoadImage``, ``PydicomReader``
for DICOM), the reader the bundle's own ``inference.json`` uses, so the maps and scores equal the bundle's. A DICOM
series is given to the reader as a folder holding only that series' instances (links in a scratch folder), so other
series and stray files in the same input folder never mix into the volume.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medad_monai.deploy.studies import Study
from medad_monai.inference import AnomalyResult, BundleModel, ScoringOptions, score_volume

__all__ = ["ScoredStudy", "SeriesGeometryError", "check_series_geometry", "resolve_model_path", "score_study"]


@dataclass
class ScoredStudy:
    """A study with its :class:`~medad_monai.inference.AnomalyResult` (what flows between the writer operators)."""

    study: Study
    result: AnomalyResult

    def summary(self) -> dict[str, Any]:
        """The result's JSON summary with the study's description (DICOM UIDs, files, stray files)."""
        return {**self.result.summary(), "study": self.study.describe()}


def resolve_model_path(path: str | os.PathLike) -> Path:
    """The bundle folder or TorchScript file to serve from ``-m`` / ``HOLOSCAN_MODEL_PATH``.

    Accepts a bundle folder (``configs/inference.json``), a ``model.ts`` / ``model.pt`` file, or a models folder as
    a MAP mounts it (``/opt/holoscan/models`` holding one bundle folder or one ``.ts`` file).

    Raises:
        FileNotFoundError: naming the path, when it holds no bundle or holds several.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path '{p}' does not exist")
    if p.is_file() or (p / "configs" / "inference.json").is_file():
        return p
    candidates = [c for c in sorted(p.iterdir()) if (c / "configs" / "inference.json").is_file()]
    candidates += [c for c in sorted(p.iterdir()) if c.is_file() and c.suffix == ".ts"]
    if len(candidates) == 1:
        return candidates[0]
    what = "no bundle folder (configs/inference.json) or .ts file" if not candidates else "several bundles"
    raise FileNotFoundError(f"model path '{p}' holds {what}; give one bundle folder or TorchScript file with -m")


def _series_folder(study: Study, scratch: Path) -> Path:
    """A folder holding only the series' instances (symbolic links; copies where links are not allowed)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{study.name[:40]}_", dir=scratch))
    for i, f in enumerate(study.files):
        dest = folder / f"{i:05d}_{f.name}"
        try:
            dest.symlink_to(f.resolve())
        except OSError:
            shutil.copy2(f, dest)
    return folder


class SeriesGeometryError(ValueError):
    """A DICOM series that is not one regular stack of parallel slices (a localizer's other orientation, a gap)."""


def check_series_geometry(study: Study, tolerance: float = 0.1) -> None:
    """Refuse a multi-instance series that would stack into a wrong volume, naming the study and the problem.

    MONAI's reader stacks a series' instances by position and gives the stack one slice spacing: instances of
    another orientation (localizers in the same series) would be stacked as if parallel, and a gap would be spread
    evenly over every slice, so the map and the SEG frames would land on the wrong anatomy. Checked here, as
    highdicom and MONAI Deploy's series selection do: one ``ImageOrientationPatient`` and one size for every
    instance, distinct positions, and slice spacings within ``tolerance`` (relative) of their median.
    """
    import pydicom

    headers = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in study.files]
    orientations = {tuple(np.round([float(v) for v in h.get("ImageOrientationPatient", [])], 4)) for h in headers}
    if len(orientations) != 1 or not next(iter(orientations)):
        raise SeriesGeometryError(
            f"study '{study.name}': its {len(headers)} instances have {len(orientations)} image orientations "
            "(a localizer in the series?); export each orientation as its own series"
        )
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) != 1:
        raise SeriesGeometryError(f"study '{study.name}': its instances have different sizes {sorted(sizes)}")
    row, col = np.asarray(next(iter(orientations))[:3]), np.asarray(next(iter(orientations))[3:])
    normal = np.cross(row, col)
    depth = np.sort([float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for h in headers])
    steps = np.diff(depth)
    if (steps <= 1e-4).any():
        raise SeriesGeometryError(f"study '{study.name}': two instances share a slice position")
    median = float(np.median(steps))
    if (np.abs(steps - median) > tolerance * median).any():
        raise SeriesGeometryError(
            f"study '{study.name}': slice spacing varies from {steps.min():.3g} to {steps.max():.3g} mm (median "
            f"{median:.3g}): a gap or overlapping slices cannot be stacked into one regular volume"
        )


def score_study(
    model: BundleModel,
    study: Study,
    scoring: ScoringOptions | None = None,
    scratch: str | os.PathLike | None = None,
) -> ScoredStudy:
    """Score a study (2D picture, 2D/3D NIfTI, single- or multi-instance DICOM series) slice by slice.

    ``scoring``: the :class:`~medad_monai.inference.ScoringOptions` of
    :func:`~medad_monai.inference.score_volume` (default: its defaults).
    The result's ``source`` is the study's file (or, for a multi-instance series, its folder).
    """
    kwargs: dict[str, Any] = (scoring if scoring is not None else ScoringOptions()).as_kwargs()
    if len(study.files) == 1:
        result = score_volume(model, study.files[0], **kwargs)
    else:
        check_series_geometry(study)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            result = score_volume(model, _series_folder(study, Path(tmp)), **kwargs)
        result.source = str(study.files[0].parent)
    if not np.isfinite(result.map).all():
        raise RuntimeError(f"study '{study.name}': the anomaly map holds NaN or infinite values")
    return ScoredStudy(study=study, result=result)
