"""Operating points from validation normals: the threshold a target specificity needs, and what it gives on a test set.

An anomaly detector is calibrated without anomalous validation images (one-class data have none), so the only
target it can be set for in advance is a specificity: the threshold that clears a fraction ``q`` of normals is the
``q`` quantile of the validation normals' scores (the rule every bundle stores its threshold by,
:func:`quantile_threshold`). A sensitivity target would need labelled anomalies before the test set, which these
settings do not have, so none is offered. How certain the threshold is depends on how many normals it came from:
its interval is a bootstrap over those normals (percentile interval of the resampled quantile). The test-set
sensitivity and specificity at each threshold come with a stratified bootstrap interval over the test images
(:func:`~medad_monai.metrics.bootstrap.bootstrap_indices`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medad_monai.metrics.bootstrap import bootstrap_indices, resampled_sensitivity, resampled_specificity
from medad_monai.metrics.ranking import check_scores

__all__ = [
    "DEFAULT_TARGET_SPECIFICITIES",
    "operating_point",
    "quantile_threshold",
    "specificity_operating_points",
    "specificity_threshold",
]

DEFAULT_TARGET_SPECIFICITIES = (0.90, 0.95, 0.99)


def quantile_threshold(normal_scores: np.ndarray, quantile: float = 0.95) -> float:
    """The ``quantile`` of validation-normal image scores (numpy's linear interpolation): about ``1 - quantile`` of
    normals are flagged by ``score > threshold``."""
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("threshold calibration needs at least one validation normal image")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(s, quantile))


def specificity_threshold(
    normal_scores: np.ndarray, target: float, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The threshold for a target specificity from validation normals, with a bootstrap interval over the normals.

    Returns:
        ``{"target_specificity", "threshold", "threshold_ci95": [low, high], "n_normals"}``; the interval is
        ``[nan, nan]`` when ``resamples`` is 0.
    """
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError("validation-normal scores must be finite")
    value = quantile_threshold(s, target)
    interval = [float("nan"), float("nan")]
    if resamples > 0:
        rng = np.random.default_rng(seed)
        resampled = np.quantile(s[rng.integers(0, s.size, size=(resamples, s.size))], target, axis=1)
        tail = (1.0 - level) / 2.0
        interval = [float(v) for v in np.quantile(resampled, [tail, 1.0 - tail])]
    return {"target_specificity": float(target), "threshold": value, "threshold_ci95": interval, "n_normals": s.size}


def operating_point(
    scores: np.ndarray, labels: np.ndarray, threshold: float, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Sensitivity and specificity of the decision ``score > threshold`` on a labelled test set, each with a
    stratified bootstrap percentile interval (``[nan, nan]`` when ``resamples`` is 0)."""
    s, y = check_scores(scores, labels)
    out: dict[str, Any] = {}
    idx = bootstrap_indices(y, resamples, seed) if resamples > 0 else None
    tail = (1.0 - level) / 2.0
    for name, fn in (("sensitivity", resampled_sensitivity), ("specificity", resampled_specificity)):
        out[name] = float(fn(s[None], y[None], threshold)[0])
        out[f"{name}_ci95"] = (
            [float(v) for v in np.quantile(fn(s[idx], y[idx], threshold), [tail, 1.0 - tail])]
            if idx is not None
            else [float("nan"), float("nan")]
        )
    return out


def specificity_operating_points(
    normal_scores: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    targets: Sequence[float] = DEFAULT_TARGET_SPECIFICITIES,
    resamples: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each target specificity: its threshold from the validation normals (:func:`specificity_threshold`) and
    the test-set sensitivity and specificity there (:func:`operating_point`)."""
    points = []
    for target in targets:
        if not 0.0 < target < 1.0:
            raise ValueError(f"a target specificity must be in (0, 1), got {target}")
        point = specificity_threshold(normal_scores, target, resamples, seed)
        point.update(operating_point(scores, labels, point["threshold"], resamples, seed))
        points.append(point)
    return points
