"""Stratified bootstrap confidence intervals of the image-level metrics, vectorised over resamples.

A resample draws, with replacement and separately within each class, as many normal and as many anomalous images as
the test set has (stratified: every resample keeps the class balance, so AUROC and AP are always defined). The
metrics of all resamples are computed at once on a ``(resamples, images)`` matrix, with the same tie handling as
:mod:`medad_monai.metrics.ranking` (ties count one half in AUROC; precision is read at the end of each group of tied
scores in AP and F1-max), so a resample that is the test set itself gives exactly the exact metrics. 2000 resamples
over 10,000 images take seconds on a CPU.

The interval is the percentile interval (2.5% and 97.5% quantiles by default). :func:`paired_bootstrap` compares
two scores of the same images (two maps of one model, or two models) on the same resamples. :func:`roc_band` and
:func:`pr_band` give pointwise bands of the ROC and precision-recall curves (the curve of each resample read on a
fixed grid, then the percentiles at each grid point).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from medad_monai.metrics.ranking import check_scores

__all__ = [
    "BOOTSTRAP_METRICS",
    "bootstrap_ci",
    "bootstrap_indices",
    "paired_bootstrap",
    "pr_band",
    "resampled_auroc",
    "resampled_average_precision",
    "resampled_f1_max",
    "resampled_npv",
    "resampled_ppv",
    "resampled_precision_at_recall",
    "resampled_sensitivity",
    "resampled_specificity",
    "resampled_tpr_at_fpr",
    "roc_band",
]


def bootstrap_indices(labels: np.ndarray, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``(resamples, n)`` image indices: each row draws the normals among the normals and the anomalous images among
    the anomalous ones, with replacement (normals first, then anomalous images)."""
    y = np.asarray(labels).ravel()
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    parts = []
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        if members.size == 0:
            raise ValueError("a stratified bootstrap needs both normal and anomalous images")
        parts.append(members[rng.integers(0, members.size, size=(resamples, members.size))])
    return np.concatenate(parts, axis=1)


def _sorted_rows(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by decreasing score: labels, cumulative true and false positives, and for each position the
    index of the end of its group of tied scores (where precision and recall are read)."""
    order = np.argsort(-s, axis=1, kind="stable")
    s, y = np.take_along_axis(s, order, 1), np.take_along_axis(y, order, 1)
    n = s.shape[1]
    tps = np.cumsum(y, axis=1)
    fps = np.arange(1, n + 1) - tps
    last = np.ones_like(s, dtype=bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    ends = np.where(last, np.arange(n), n)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]  # the first group end at or after i
    return y, tps, fps, group_end


def resampled_auroc(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``s`` (``(R, n)`` scores, ``y`` labels of the same shape): the Mann-Whitney statistic
    with mid-ranks, equal to the trapezoidal ROC area with ties counted one half."""
    ranks = rankdata(s, axis=1)  # mid-ranks: ties count one half
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def resampled_average_precision(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AP of each row: the mean over anomalous images of the precision at the end of their group of tied scores
    (scikit-learn's ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds)."""
    ys, tps, fps, end = _sorted_rows(s, y)
    precision = tps / (tps + fps)
    at_end = np.take_along_axis(precision, end, 1)
    return (ys * at_end).sum(axis=1) / ys.sum(axis=1)


def resampled_f1_max(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The largest F1 over thresholds ``score >= t`` (at the ends of groups of tied scores) of each row."""
    ys, tps, fps, end = _sorted_rows(s, y)
    n_pos = ys.sum(axis=1, keepdims=True)
    f1 = 2 * tps / (tps + fps + n_pos)
    last = end == np.arange(s.shape[1])
    return np.where(last, f1, 0.0).max(axis=1)


def resampled_sensitivity(s: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    """The fraction of anomalous images scored above ``threshold`` (the model's decision ``score > threshold``)."""
    return ((s > threshold) & (y == 1)).sum(axis=1) / (y == 1).sum(axis=1)


def resampled_specificity(s: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    """The fraction of normal images scored at or below ``threshold``."""
    return ((s <= threshold) & (y == 0)).sum(axis=1) / (y == 0).sum(axis=1)


def resampled_ppv(s: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    """Positive predictive value of ``score > threshold`` at the test set's prevalence (NaN without a positive
    decision)."""
    flagged = s > threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        return (flagged & (y == 1)).sum(axis=1) / flagged.sum(axis=1)


def resampled_npv(s: np.ndarray, y: np.ndarray, threshold: float) -> np.ndarray:
    """Negative predictive value of ``score <= threshold`` at the test set's prevalence (NaN without a negative
    decision)."""
    cleared = s <= threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        return (cleared & (y == 0)).sum(axis=1) / cleared.sum(axis=1)


BOOTSTRAP_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "auroc": resampled_auroc,
    "ap": resampled_average_precision,
    "f1_max": resampled_f1_max,
}


def bootstrap_ci(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Percentile confidence intervals of AUROC, AP and F1-max (and, with a finite ``threshold``, of the sensitivity,
    specificity, PPV and NPV of the decision ``score > threshold``; PPV and NPV at the test set's prevalence).

    Returns:
        ``{metric: {"value": on the test set, "low": ..., "high": ...}}``, plus ``"resamples"``, ``"level"`` and
        ``"seed"`` under ``"bootstrap"``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, y = check_scores(scores, labels)
    idx = bootstrap_indices(y, resamples, seed)
    rs, ry = s[idx], y[idx]
    metrics = dict(BOOTSTRAP_METRICS)
    if threshold is not None and np.isfinite(threshold):
        t = float(threshold)
        metrics["sensitivity"] = lambda a, b: resampled_sensitivity(a, b, t)
        metrics["specificity"] = lambda a, b: resampled_specificity(a, b, t)
        metrics["ppv"] = lambda a, b: resampled_ppv(a, b, t)
        metrics["npv"] = lambda a, b: resampled_npv(a, b, t)
    tail = (1.0 - level) / 2.0
    out: dict[str, dict[str, float]] = {}
    for name, fn in metrics.items():
        values = fn(rs, ry)
        values = values[np.isfinite(values)]  # PPV/NPV of a resample without such a decision are undefined
        low, high = np.quantile(values, [tail, 1.0 - tail]) if values.size else (float("nan"), float("nan"))
        out[name] = {"value": float(fn(s[None], y[None])[0]), "low": float(low), "high": float(high)}
    out["bootstrap"] = {"resamples": float(resamples), "level": float(level), "seed": float(seed)}
    return out


def paired_bootstrap(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    metric: str = "auroc",
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """The difference ``metric(a) - metric(b)`` of two scores of the same images, on the same stratified resamples:
    its value, percentile interval and a two-sided p-value (twice the smaller fraction of resampled differences on
    either side of zero, at most 1)."""
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {sorted(BOOTSTRAP_METRICS)}, got {metric!r}")
    a, y = check_scores(scores_a, labels)
    b, _ = check_scores(scores_b, labels)
    fn = BOOTSTRAP_METRICS[metric]
    idx = bootstrap_indices(y, resamples, seed)
    diff = fn(a[idx], y[idx]) - fn(b[idx], y[idx])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diff, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(float((diff <= 0).mean()), float((diff >= 0).mean())))
    value = float(fn(a[None], y[None])[0] - fn(b[None], y[None])[0])
    return {"difference": value, "low": float(low), "high": float(high), "p_value": p, "resamples": float(resamples)}


def _group_end_counts(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each position of each row sorted by decreasing score, the true positives, false positives and number
    flagged at the end of its group of tied scores: the points of the exact curves (one per distinct threshold,
    repeated across a tied group), nondecreasing along each row."""
    _, tps, fps, end = _sorted_rows(s, y)
    return np.take_along_axis(tps, end, 1), np.take_along_axis(fps, end, 1), end + 1


def _row_searchsorted(values: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted`` of each row of ``queries`` ``(R, G)`` in the same row of ``values`` ``(R, n)`` (each row
    nondecreasing, all values in ``[0, n]``): the rows are shifted apart by ``n + 1`` so that one search of the
    flattened matrix does every row at once."""
    rows, n = values.shape
    shift = (n + 1.0) * np.arange(rows)[:, None]
    found = np.searchsorted((values + shift).ravel(), (queries + shift).ravel(), side=side)
    return found.reshape(queries.shape) - n * np.arange(rows)[:, None]


def resampled_tpr_at_fpr(s: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The exact ROC curve of each row (the polyline through one point per distinct threshold, from (0, 0), whose
    trapezoidal area is :func:`resampled_auroc`) read at the false positive rates ``grid``: ``(R, G)`` true positive
    rates, linearly interpolated between the curve's points and, where the curve rises vertically at a grid value,
    its top (the most anomalies found at that false positive rate)."""
    tp_end, fp_end, _ = _group_end_counts(s, y)
    n_pos = y[0].sum()
    n_neg = y.shape[1] - n_pos
    # the curve's points with the origin in front (repeated within tied groups, which only adds zero-length steps)
    tp = np.concatenate([np.zeros((s.shape[0], 1)), tp_end], axis=1).astype(np.float64)
    fp = np.concatenate([np.zeros((s.shape[0], 1)), fp_end], axis=1).astype(np.float64)
    target = np.broadcast_to(np.asarray(grid, dtype=np.float64) * n_neg, (s.shape[0], len(grid)))
    # the last point at or left of the grid value (the origin always is), and the next point, right of it
    left = _row_searchsorted(fp, target + 1e-9, "right") - 1
    right = np.minimum(left + 1, fp.shape[1] - 1)
    fp_a, fp_b = np.take_along_axis(fp, left, 1), np.take_along_axis(fp, right, 1)
    tp_a, tp_b = np.take_along_axis(tp, left, 1), np.take_along_axis(tp, right, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(fp_b > fp_a, (tp_b - tp_a) / (fp_b - fp_a), 0.0)
    return np.clip((tp_a + slope * (target - fp_a)) / n_pos, 0.0, 1.0)


def resampled_precision_at_recall(s: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The exact precision-recall step curve of each row read at the recalls ``grid``: ``(R, G)`` precisions at the
    first threshold whose recall reaches the grid value (the curve whose area is :func:`resampled_average_precision`:
    on the grid ``k / n_anomalous``, ``k = 1..n_anomalous``, the mean of the precisions is the AP)."""
    tp_end, _, flagged = _group_end_counts(s, y)
    n_pos = y[0].sum()
    target = np.broadcast_to(np.asarray(grid, dtype=np.float64) * n_pos, (s.shape[0], len(grid)))
    first = np.minimum(_row_searchsorted(tp_end.astype(np.float64), target - 1e-9, "left"), s.shape[1] - 1)
    return np.take_along_axis(tp_end, first, 1) / np.take_along_axis(flagged, first, 1)


def _curve_band(
    read: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    scores: np.ndarray,
    labels: np.ndarray,
    resamples: int,
    seed: int,
    grid: np.ndarray | None,
    level: float,
) -> dict[str, np.ndarray]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s, y = check_scores(scores, labels)
    g = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if g.size == 0 or g.min() < 0.0 or g.max() > 1.0:
        raise ValueError("the grid must hold rates in [0, 1]")
    idx = bootstrap_indices(y, resamples, seed)
    curves = read(s[idx], y[idx], g)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(curves, [tail, 1.0 - tail], axis=0)
    return {"grid": g, "value": read(s[None], y[None], g)[0], "low": low, "high": high}


def roc_band(
    scores: np.ndarray,
    labels: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    grid: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """A pointwise stratified bootstrap band of the ROC curve: the true positive rate of each resample at the false
    positive rates ``grid`` (default 0, 0.01, ..., 1; :func:`resampled_tpr_at_fpr`), and at each grid point the
    percentile interval.

    Returns:
        ``{"grid": false positive rates, "value": the test set's true positive rates there, "low": ..., "high":
        ...}`` (arrays of the grid's length).
    """
    return _curve_band(resampled_tpr_at_fpr, scores, labels, resamples, seed, grid, level)


def pr_band(
    scores: np.ndarray,
    labels: np.ndarray,
    resamples: int = 1000,
    seed: int = 0,
    grid: np.ndarray | None = None,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """A pointwise stratified bootstrap band of the precision-recall curve: the precision of each resample at the
    recalls ``grid`` (default 0, 0.01, ..., 1; :func:`resampled_precision_at_recall`), and at each grid point the
    percentile interval.

    Returns:
        ``{"grid": recalls, "value": the test set's precisions there, "low": ..., "high": ...}``.
    """
    return _curve_band(resampled_precision_at_recall, scores, labels, resamples, seed, grid, level)
