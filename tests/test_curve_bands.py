"""Bootstrap bands of the ROC and precision-recall curves (medad_monai.metrics.bootstrap.roc_band / pr_band): each
resample's curve equals the exact curve of that resample, computed here independently, one grid point at a time."""

from __future__ import annotations

import numpy as np
import pytest

from medad_monai.metrics.bootstrap import bootstrap_indices, pr_band, roc_band
from medad_monai.metrics.ranking import average_precision, roc_curve


def _data(n: int, separation: float, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = rng.normal(size=n) + separation * y
    return (np.round(s, 1) if ties else s), y


def _tpr_reference(s: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The exact ROC polyline (ranking.roc_curve) read at each grid value by a plain loop: the highest point at or
    left of it, interpolated towards the first point right of it."""
    fpr, tpr, _ = roc_curve(s, y)
    out = []
    for f in grid:
        at_or_left = fpr <= f + 1e-12
        a_fpr, a_tpr = fpr[at_or_left].max(), tpr[at_or_left].max()
        right = np.flatnonzero(fpr > f + 1e-12)
        if right.size == 0:
            out.append(a_tpr)
            continue
        b_fpr, b_tpr = fpr[right[0]], tpr[right[0]]
        out.append(a_tpr + (b_tpr - a_tpr) * (f - a_fpr) / (b_fpr - a_fpr))
    return np.asarray(out)


def _precision_reference(s: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Precision at the highest threshold ``score >= t`` (over distinct scores) whose recall reaches each grid value."""
    out = []
    for r in grid:
        for t in np.sort(np.unique(s))[::-1]:
            flagged = s >= t
            recall = (flagged & (y == 1)).sum() / (y == 1).sum()
            if recall >= r - 1e-12:
                out.append((flagged & (y == 1)).sum() / flagged.sum())
                break
    return np.asarray(out)


@pytest.mark.parametrize("ties", [False, True])
def test_a_single_resample_band_is_that_resamples_exact_curve(ties):
    s, y = _data(80, 1.0, seed=1, ties=ties)
    assert ties == (np.unique(s).size < s.size)
    grid = np.linspace(0, 1, 41)
    row = bootstrap_indices(y, resamples=1, seed=7)[0]  # the resample roc_band draws with the same seed
    roc = roc_band(s, y, resamples=1, seed=7, grid=grid)
    np.testing.assert_allclose(roc["low"], _tpr_reference(s[row], y[row], grid), atol=1e-12)
    np.testing.assert_allclose(roc["high"], roc["low"], atol=1e-12)
    np.testing.assert_allclose(roc["value"], _tpr_reference(s, y, grid), atol=1e-12)
    pr = pr_band(s, y, resamples=1, seed=7, grid=grid)
    np.testing.assert_allclose(pr["low"], _precision_reference(s[row], y[row], grid), atol=1e-12)
    np.testing.assert_allclose(pr["high"], pr["low"], atol=1e-12)
    np.testing.assert_allclose(pr["value"], _precision_reference(s, y, grid), atol=1e-12)
    assert not np.allclose(roc["low"], roc["value"])  # a resample is not the test set: the check above can fail


def test_the_precision_curve_on_the_anomaly_grid_averages_to_the_ap():
    s, y = _data(120, 0.8, seed=2, ties=True)
    grid = np.arange(1, y.sum() + 1) / y.sum()
    assert pr_band(s, y, resamples=2, grid=grid)["value"].mean() == pytest.approx(average_precision(s, y), abs=1e-12)


def test_bands_are_seeded_bounded_and_narrow_with_more_images():
    small, large = _data(60, 1.0, seed=3), _data(2000, 1.0, seed=3)
    widths = []
    for s, y in (small, large):
        band = roc_band(s, y, resamples=300, seed=5)
        assert np.all((band["low"] >= 0) & (band["low"] <= band["high"]) & (band["high"] <= 1))
        assert band["value"][0] >= 0 and band["value"][-1] == 1.0
        assert np.all(np.diff(band["value"]) >= -1e-12)  # a ROC curve never falls
        widths.append(float(np.mean(band["high"] - band["low"])))
    assert widths[1] < widths[0] / 2
    s, y = small
    for band in (roc_band, pr_band):
        a, b = band(s, y, resamples=50, seed=9), band(s, y, resamples=50, seed=9)
        np.testing.assert_array_equal(a["low"], b["low"])
        assert not np.array_equal(a["low"], band(s, y, resamples=50, seed=10)["low"])


def test_bad_grid_or_level_is_refused():
    s, y = _data(40, 1.0)
    with pytest.raises(ValueError, match="grid"):
        roc_band(s, y, resamples=2, grid=np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="level"):
        pr_band(s, y, resamples=2, level=1.0)
