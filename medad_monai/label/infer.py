"""MONAI Label infer task for an anomaly bundle: an ``anomaly`` label (or the float heatmap) plus the score.

Stock ``BundleInferTask`` cannot serve an anomaly bundle: it runs the network once on the whole input (a 2D network
on a 3D volume fails), returns the float map that 3D Slicer turns into integer segments, and has no place for the
image score. :class:`AnomalyInferTask` scores the input with the bundle's own transforms through
:func:`medad_monai.inference.score_volume` (2D images directly, 3D volumes slice by slice along a configurable axis),
and returns

* ``output="mask"``: the map thresholded at the threshold stored in the model (calibrated on validation normals),
  as a ``uint8`` label whose value 1 is named ``anomaly``; typed ``segmentation`` so Slicer lists it;
* ``output="heatmap"``: the float32 map as NIfTI, for viewers that display float overlays;

both in the input's geometry (shape and affine), with the score, the threshold, the decision, the per-slice scores
and the model version in the result JSON (MONAI Label returns what is under ``data["result"]``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from medad_monai.inference import VOLUME_REDUCTIONS, BundleLoadError, ScoringOptions, score_volume
from medad_monai.label.models import ServedBundles
from medad_monai.transforms import ImageReadError

__all__ = ["OUTPUTS", "AnomalyInferTask", "result_extension"]

logger = logging.getLogger("medad_monai")

OUTPUTS = ("mask", "heatmap")
_2D_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# containers a client may ask for (``result_extension``) that hold the result losslessly, with its geometry
_VOLUME_FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


def result_extension(requested: Any, output: str, is_picture: bool) -> str:
    """The container of the returned label or map: the client's ``result_extension`` when it holds the result
    losslessly (a volume format; PNG for a 2D picture's mask), else PNG for a 2D picture's mask, else NIfTI.
    A float heatmap never goes into PNG/JPEG, a mask never into JPEG (lossy)."""
    ext = str(requested).lower() if requested else ""
    if ext and not ext.startswith("."):
        ext = "." + ext
    if ext in _VOLUME_FORMATS or (ext == ".png" and is_picture and output == "mask"):
        return ext
    return ".png" if (is_picture and output == "mask") else ".nii.gz"


def _first(value: Any) -> Any:
    """A request option as given, or the first (default) entry of an option list from the task config."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


class AnomalyInferTask(BasicInferTask):
    """Infer task serving one anomaly bundle.

    Args:
        bundle: the bundle folder (``configs/``, ``models/``).
        served: the app's shared :class:`~medad_monai.label.models.ServedBundles`.
        output: ``"mask"`` (thresholded ``anomaly`` label) or ``"heatmap"`` (float map).
        scoring: the default :class:`~medad_monai.inference.ScoringOptions` (slicing axis, volume reduction,
            ...); a request may override ``axis``, ``volume_reduction``, ``top_k`` and ``min_relative_body``
            (``{"axis": 0}``).
        dimension: what the task reports to clients (3: it serves volumes; 2D images work too).
    """

    def __init__(
        self,
        bundle: str | Path,
        served: ServedBundles,
        output: str = "mask",
        scoring: ScoringOptions | None = None,
        dimension: int = 3,
    ) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.scoring = scoring if scoring is not None else ScoringOptions()
        self.bundle = Path(bundle).resolve()
        self.served, self.output = served, output
        meta = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        kind = "anomaly label at the model's calibrated threshold" if output == "mask" else "float anomaly heatmap"
        default = self.scoring.volume_reduction  # listed first: Slicer shows the first entry as the default
        reductions = [default] + [r for r in VOLUME_REDUCTIONS if r != default]
        super().__init__(
            path=str(self.bundle / "models" / "model.pt"),
            network=None,
            type=InferType.SEGMENTATION,
            labels={"anomaly": 1},
            dimension=dimension,
            description=f"{meta.get('name', self.bundle.name)}: {kind}; 3D volumes scored slice by slice",
            config={
                "axis": self.scoring.axis,
                "volume_reduction": reductions,
                "top_k": self.scoring.top_k,
                "min_relative_body": self.scoring.min_relative_body,
            },
        )
        self.version = meta.get("version")

    def is_valid(self) -> bool:
        # listed even before the bundle is trained: a request then says how to train it
        return (self.bundle / "configs" / "inference.json").is_file()

    def info(self) -> dict[str, Any]:
        i = super().info()
        i.update({"version": self.version, "bundle": self.bundle.name, "output": self.output})
        return i

    def pre_transforms(self, data: Any = None) -> list:
        return []  # the bundle's own transforms run per slice inside score_volume

    def post_transforms(self, data: Any = None) -> list:
        return []  # maps come back in the input geometry already

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cpu") -> dict[str, Any]:
        image = data.get("image_path") or data.get("image")
        if not isinstance(image, str):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, "anomaly infer needs an image path or upload")
        try:
            model = self.served.get(self.bundle, device=str(device))
        except BundleLoadError as e:
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, str(e)) from e
        try:
            scoring = replace(  # the request's options over the task's, validated by ScoringOptions
                self.scoring,
                axis=int(_first(data.get("axis", self.scoring.axis))),
                volume_reduction=str(_first(data.get("volume_reduction", self.scoring.volume_reduction))),
                top_k=int(_first(data.get("top_k", self.scoring.top_k))),
                min_relative_body=float(_first(data.get("min_relative_body", self.scoring.min_relative_body))),
            )
            result = score_volume(model, image, **scoring.as_kwargs())
        except ImageReadError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(e)) from e
        except ValueError as e:  # bad options (axis, reduction)
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"image '{image}': {e}") from e

        array = result.mask if self.output == "mask" else result.map
        data["pred"] = MetaTensor(torch.as_tensor(array), affine=torch.as_tensor(result.affine))
        is_picture = result.axis is None and Path(image).suffix.lower() in _2D_PICTURES
        data["result_extension"] = result_extension(data.get("result_extension"), self.output, is_picture)
        data["result_dtype"] = "uint8" if self.output == "mask" else "float32"  # whatever the client asked
        summary = result.summary()
        summary.pop("source", None)  # a server-side temporary path for uploads; the client knows its input
        summary.update({"bundle": self.bundle.name, "output": self.output, "label": "anomaly"})
        data["result"] = summary
        logger.info(
            f"{self.bundle.name}: score {result.score:.6g} threshold {result.threshold:.6g} "
            f"({result.threshold_source}) decision {result.decision} ({Path(image).name})"
        )
        return data
