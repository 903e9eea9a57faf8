"""SDK-free serving core shared by the MONAI Label and MONAI Deploy integrations.

- :func:`load_bundle_model` loads any 2D anomaly bundle (directory or TorchScript) with its own preprocessing,
  score reduction and calibrated threshold;
- :func:`score_volume` scores a 2D image or a 3D volume slice by slice, keeping the input's geometry, with the
  options of :class:`ScoringOptions` (validated once, passed unchanged by Label and Deploy);
- :mod:`~medad_monai.inference.results` writes maps, masks, JSON summaries and overlays atomically;
- :class:`StudyRanker` ranks studies ("most anomalous", "nearest the threshold") over a persistent score cache.
"""

from medad_monai.inference.bundle_model import (
    BundleLoadError,
    BundleModel,
    file_version,
    load_bundle_model,
    model_version,
)
from medad_monai.inference.options import MASK_SCOPES, VOLUME_REDUCTIONS, ScoringOptions
from medad_monai.inference.ranking import ScoreCache, StudyRanker, most_anomalous, nearest_threshold, study_stamp
from medad_monai.inference.results import (
    write_json,
    write_map,
    write_mask,
    write_nifti,
    write_overlay,
    write_result,
)
from medad_monai.inference.volume import (
    AnomalyResult,
    load_input,
    reduce_scores,
    score_image,
    score_volume,
)

__all__ = [
    "MASK_SCOPES",
    "VOLUME_REDUCTIONS",
    "AnomalyResult",
    "BundleLoadError",
    "BundleModel",
    "ScoreCache",
    "ScoringOptions",
    "StudyRanker",
    "file_version",
    "load_bundle_model",
    "load_input",
    "model_version",
    "most_anomalous",
    "nearest_threshold",
    "reduce_scores",
    "score_image",
    "score_volume",
    "study_stamp",
    "write_json",
    "write_map",
    "write_mask",
    "write_nifti",
    "write_overlay",
    "write_result",
]
