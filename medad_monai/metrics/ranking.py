"""Exact image-level ranking metrics from scores and binary labels (no sampling of thresholds)."""

from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "check_scores", "f1_max", "roc_auc", "roc_curve"]


def check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 and labels as 0/1 int64, flat; a clear error on other labels, sizes or non-finite scores."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s, y


def _counts_at_distinct_thresholds(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives when predicting ``score >= t`` for each distinct score ``t``."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps, s[last_of_tie]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold (starting at (0, 0)), and the thresholds."""
    s, y = check_scores(scores, labels)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both normal and anomalous images")
    tps, fps, thr = _counts_at_distinct_thresholds(s, y)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, thr]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal over distinct thresholds: ties count one half)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    # written out: np.trapezoid is numpy>=2 only and the MONAI Label environment pins numpy<2
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds (scikit-learn's definition)."""
    s, y = check_scores(scores, labels)
    if y.sum() == 0:
        raise ValueError("average precision needs at least one anomalous image")
    tps, fps, _ = _counts_at_distinct_thresholds(s, y)
    precision = tps / (tps + fps)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Maximum F1 over all thresholds ``score >= t`` and the threshold that reaches it, exactly from sorted scores."""
    s, y = check_scores(scores, labels)
    if y.sum() == 0:
        raise ValueError("F1 needs at least one anomalous image")
    tps, fps, thr = _counts_at_distinct_thresholds(s, y)
    f1 = 2 * tps / (tps + fps + y.sum())
    best = int(np.argmax(f1))
    return float(f1[best]), float(thr[best])
