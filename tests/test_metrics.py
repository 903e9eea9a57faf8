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


def _run_pixel_auroc(items: list[tuple[np.ndarray, np.ndarray, int]]) -> float:
    """Run PixelMetrics on an Ignite engine whose decollated output holds the maps and whose batch holds the masks
    (where MONAI's postprocessing leaves input keys)."""
    import torch
    from ignite.engine import Engine

    from medad_monai.handlers.pixel_metrics import PixelMetrics

    def step(engine, item):
        amap, mask, label = item
        engine.state.batch = [{"mask": torch.as_tensor(mask)[None]}]
        return [{"pred": torch.as_tensor(amap)[None], "label": torch.tensor(label)}]

    engine = Engine(step)
    PixelMetrics().attach(engine)
    engine.run(items, max_epochs=1)
    return engine.state.metrics["pixel_auroc"]


def test_pixel_auroc_pools_every_pixel_against_the_masks():
    normal = (np.array([[0.1, 0.2], [0.3, 0.0]]), np.zeros((2, 2)), 0)
    lesion = (np.array([[0.9, 0.25], [0.05, 0.4]]), np.array([[1, 1], [0, 0]]), 1)
    # lesion pixels 0.9 and 0.25 against the six others (0.1, 0.2, 0.3, 0.0, 0.05, 0.4):
    # 0.9 beats all 6, 0.25 beats 4 -> 10 of 12 pairs
    assert _run_pixel_auroc([normal, lesion]) == pytest.approx(10 / 12)
    # an anomalous image without a lesion mask: no pixel ground truth, the metric is left out
    assert np.isnan(_run_pixel_auroc([normal, (lesion[0], np.zeros((2, 2)), 1)]))
    with pytest.raises(ValueError, match="map of size"):
        _run_pixel_auroc([(np.zeros((2, 2)), np.zeros((3, 3)), 0)])
