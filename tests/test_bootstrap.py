"""Stratified bootstrap confidence intervals (medad_monai.metrics.bootstrap): exact on the test set itself, ties as
the exact metrics, intervals that contain the value and shrink with more images, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from medad_monai.metrics.bootstrap import (
    bootstrap_ci,
    bootstrap_indices,
    paired_bootstrap,
    resampled_auroc,
    resampled_average_precision,
    resampled_f1_max,
)
from medad_monai.metrics.ranking import average_precision, f1_max, roc_auc


def _data(n: int, separation: float, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = rng.normal(size=n) + separation * y
    return (np.round(s, 1) if ties else s), y


@pytest.mark.parametrize("ties", [False, True])
def test_each_resample_metric_equals_the_exact_metric(ties):
    s, y = _data(300, 1.0, ties=ties)
    assert ties == (np.unique(s).size < s.size)
    idx = bootstrap_indices(y, resamples=5, seed=3)
    for row in idx:  # every resample, as an ordinary test set, against the exact implementations
        rs, ry = s[row][None], y[row][None]
        assert resampled_auroc(rs, ry)[0] == pytest.approx(roc_auc(s[row], y[row]), abs=1e-12)
        assert resampled_average_precision(rs, ry)[0] == pytest.approx(average_precision(s[row], y[row]), abs=1e-12)
        assert resampled_f1_max(rs, ry)[0] == pytest.approx(f1_max(s[row], y[row])[0], abs=1e-12)


def test_resamples_are_stratified_and_seeded():
    _, y = _data(50, 1.0)
    idx = bootstrap_indices(y, resamples=20, seed=1)
    assert idx.shape == (20, 50) and (y[idx].sum(axis=1) == y.sum()).all()
    assert np.array_equal(idx, bootstrap_indices(y, resamples=20, seed=1))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        bootstrap_indices(np.zeros(5), 10)


def test_intervals_contain_the_value_and_narrow_with_more_images():
    small = bootstrap_ci(*_data(60, 1.0), threshold=0.5, resamples=500)
    large = bootstrap_ci(*_data(2000, 1.0), threshold=0.5, resamples=500)
    for name in ("auroc", "ap", "f1_max", "sensitivity", "specificity"):
        assert small[name]["low"] <= small[name]["value"] <= small[name]["high"]
        assert large[name]["high"] - large[name]["low"] < small[name]["high"] - small[name]["low"]
    s, y = _data(2000, 1.0)
    assert large["sensitivity"]["value"] == pytest.approx(np.mean(s[y == 1] > 0.5))
    tp, fp, tn, fn = (
        ((s > 0.5) & (y == 1)).sum(),
        ((s > 0.5) & (y == 0)).sum(),
        ((s <= 0.5) & (y == 0)).sum(),
        ((s <= 0.5) & (y == 1)).sum(),
    )
    assert large["ppv"]["value"] == pytest.approx(tp / (tp + fp)) and large["npv"]["value"] == pytest.approx(
        tn / (tn + fn)
    )
    assert large["ppv"]["low"] <= large["ppv"]["value"] <= large["ppv"]["high"]
    assert "sensitivity" not in bootstrap_ci(s, y, threshold=float("nan"), resamples=10)


def test_paired_difference_separates_a_better_score_from_noise():
    s, y = _data(400, 1.5)
    rng = np.random.default_rng(9)
    better = paired_bootstrap(s, rng.normal(size=s.size), y, resamples=500)
    assert better["difference"] > 0.2 and better["low"] > 0 and better["p_value"] < 0.01
    same = paired_bootstrap(s, s, y, resamples=200)
    assert same["difference"] == 0.0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="metric must be one of"):
        paired_bootstrap(s, s, y, metric="accuracy")
