"""The image score and the decision: one definition each, which every route (the bundles' postprocessing, the
threshold calibration, the support-set calibration, the serving core of MONAI Label and MONAI Deploy) calls.

* :func:`image_score`: the score of an anomaly map is its network's reduction over the map's pixels, ``"max"`` (PDD,
  D²4FAD: the most anomalous pixel, as their official evaluations) or ``"mean"`` (DDAD, MedIA 2023 §3.4). Each
  network states its reduction (:func:`score_reduction`: its ``score_reduction`` attribute, carried by TorchScript).
* :func:`decision`: ``1`` (anomalous) when the score exceeds the calibrated threshold, ``0`` when not, ``-1``
  (undecided) when the model has no threshold (NaN: its calibration did not run).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["SCORE_REDUCTIONS", "VOLUME_REDUCTIONS", "decision", "image_score", "score_reduction"]

SCORE_REDUCTIONS = ("max", "mean")
# a volume served slice by slice: its score from its slices' scores (medad_monai.inference.volume.reduce_scores)
VOLUME_REDUCTIONS = ("max", "mean", "topk")


def image_score(anomaly_map: Tensor, reduction: str = "max") -> Tensor:
    """Image scores ``(B,)`` of maps ``(B, 1, H, W)`` (or ``(B, ...)``): ``"max"`` or ``"mean"`` over each map.

    The official D²4FAD evaluation min-max normalises all maps of the test set before taking the max; that is
    monotone and does not change any ranking metric, so it is left to the evaluation code.
    """
    flat = anomaly_map.reshape(anomaly_map.shape[0], -1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "mean":
        return flat.mean(dim=1)
    raise ValueError(f"image_score: reduction must be 'max' or 'mean', got '{reduction}'")  # literal: TorchScript


def score_reduction(network: nn.Module) -> str:
    """The reduction ``network`` states (its ``score_reduction`` attribute).

    Raises:
        ValueError: the network states none (a network of another package, or a TorchScript file exported before
            networks stated it), or one that is not in :data:`SCORE_REDUCTIONS`.
    """
    reduction = getattr(network, "score_reduction", None)
    if reduction not in SCORE_REDUCTIONS:
        raise ValueError(
            f"{type(network).__name__} states no image-score reduction (score_reduction {reduction!r}, expected one "
            f"of {SCORE_REDUCTIONS})"
        )
    return str(reduction)


def decision(score: float, threshold: float) -> int:
    """``1`` if ``score > threshold``, else ``0``; ``-1`` when ``threshold`` is NaN (an uncalibrated model)."""
    return int(float(score) > threshold) if math.isfinite(threshold) else -1
