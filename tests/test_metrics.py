"""Exact ranking metrics against brute-force references."""

import itertools

import numpy as np
import pytest

from medad_monai.metrics.ranking import average_precision, f1_max, roc_auc, roc_curve


def _brute_auroc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _brute_f1max(s, y):
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        fp = np.sum(pred & (y == 0))
        fn = np.sum(~pred & (y == 1))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _brute_ap(s, y):
    ap, prev_recall = 0.0, 0.0
    for t in sorted(np.unique(s), reverse=True):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        recall, precision = tp / y.sum(), tp / pred.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, 40).astype(float)  # many ties
    y = rng.integers(0, 2, 40)
    assert roc_auc(s, y) == pytest.approx(_brute_auroc(s, y))
    assert average_precision(s, y) == pytest.approx(_brute_ap(s, y))
    assert f1_max(s, y)[0] == pytest.approx(_brute_f1max(s, y))


def test_roc_curve_endpoints_and_perfect_separation():
    fpr, tpr, _ = roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    f1, thr = f1_max(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert f1 == 1.0 and thr == 0.8


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_curve([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        roc_auc([0.1, 0.2], [0, 2])
