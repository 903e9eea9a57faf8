"""DeLong's test (medad_monai.metrics.delong): a hand-computed example, the O(mn) definition, ranking.roc_auc, the
degenerate cases and the stratified bootstrap's variance."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medad_monai.metrics.bootstrap import bootstrap_indices, resampled_auroc
from medad_monai.metrics.delong import delong_auroc_variance, delong_components, delong_test
from medad_monai.metrics.ranking import roc_auc

# three anomalous images (first) and three normal ones; a ties with a normal image at 0.4
LABELS = np.array([1, 1, 1, 0, 0, 0])
SCORES_A = np.array([0.9, 0.6, 0.4, 0.5, 0.4, 0.1])
SCORES_B = np.array([0.7, 0.3, 0.8, 0.2, 0.9, 0.1])


def test_components_and_variance_by_hand():
    # a: V10 = fraction of normals (0.5, 0.4, 0.1) below each anomalous score, a tie counting 1/2:
    #    0.9 -> 3/3, 0.6 -> 3/3, 0.4 -> (1 + 1/2)/3 = 1/2; AUROC = mean = 5/6
    #    V01 = fraction of anomalous scores (0.9, 0.6, 0.4) above each normal: 0.5 -> 2/3, 0.4 -> 5/6, 0.1 -> 1
    #    S10 = var(1, 1, 1/2; ddof 1) = (1/36 + 1/36 + 4/36) / 2 = 1/12, S01 = (1/36 + 0 + 1/36) / 2 = 1/36
    #    var = S10/3 + S01/3 = 1/36 + 1/108 = 1/27
    v10, v01 = delong_components(SCORES_A, LABELS)
    np.testing.assert_allclose(v10, [1, 1, 0.5], atol=1e-12)
    np.testing.assert_allclose(v01, [2 / 3, 5 / 6, 1], atol=1e-12)
    auroc, variance = delong_auroc_variance(SCORES_A, LABELS)
    assert auroc == pytest.approx(5 / 6, abs=1e-12)
    assert variance == pytest.approx(1 / 27, abs=1e-12)
    # b: V10 = (2/3, 2/3, 2/3) (each anomalous score beats 0.2 and 0.1, not 0.9), V01 = (1, 0, 1): AUROC 2/3,
    #    var = 0 + var(1, 0, 1; ddof 1)/3 = (1/3)/3 = 1/9
    auroc, variance = delong_auroc_variance(SCORES_B, LABELS)
    assert auroc == pytest.approx(2 / 3, abs=1e-12)
    assert variance == pytest.approx(1 / 9, abs=1e-12)


def test_delong_test_by_hand():
    # difference 5/6 - 2/3 = 1/6. V10_a - V10_b = (1/3, 1/3, -1/6): sample variance (1/36 + 1/36 + 4/36)/2 = 1/12;
    # V01_a - V01_b = (-1/3, 5/6, 0), mean 1/6: (1/4 + 4/9 + 1/36)/2 = 13/36.
    # var = (1/12)/3 + (13/36)/3 = 4/27 (= S_aa + S_bb - 2 S_ab), sd = 2/sqrt(27), z = (1/6) sqrt(27)/2 = sqrt(3)/4
    result = delong_test(SCORES_A, SCORES_B, LABELS)
    z = math.sqrt(3) / 4
    assert result["auroc_a"] == pytest.approx(5 / 6, abs=1e-12)
    assert result["auroc_b"] == pytest.approx(2 / 3, abs=1e-12)
    assert result["difference"] == pytest.approx(1 / 6, abs=1e-12)
    assert result["z"] == pytest.approx(z, abs=1e-12)
    assert result["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), abs=1e-12)  # 2 (1 - Phi(z)) ~ 0.665
    half = 1.959963984540054 * 2 / math.sqrt(27)  # the 97.5% normal quantile times sd
    assert result["low"] == pytest.approx(1 / 6 - half, abs=1e-9)
    assert result["high"] == pytest.approx(1 / 6 + half, abs=1e-9)
    # swapping a and b flips the difference and z, not the p-value
    swapped = delong_test(SCORES_B, SCORES_A, LABELS)
    assert swapped["z"] == pytest.approx(-z, abs=1e-12)
    assert swapped["p_value"] == pytest.approx(result["p_value"], abs=1e-12)


def _quadratic_components(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V10 and V01 from the m x n kernel psi(x, y) = 1, 1/2, 0 (DeLong et al.'s definition, O(mn))."""
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    psi = (pos > neg) + 0.5 * (pos == neg)
    return psi.mean(axis=1), psi.mean(axis=0)


def test_midranks_equal_the_definition_and_roc_auc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # one decimal: many ties, across the classes too
    v10, v01 = delong_components(s, y)
    ref10, ref01 = _quadratic_components(s, y)
    np.testing.assert_allclose(v10, ref10, atol=1e-12)
    np.testing.assert_allclose(v01, ref01, atol=1e-12)
    auroc, variance = delong_auroc_variance(s, y)
    assert auroc == pytest.approx(roc_auc(s, y), abs=1e-12)
    m, n = int(y.sum()), int((1 - y).sum())
    assert variance == pytest.approx(ref10.var(ddof=1) / m + ref01.var(ddof=1) / n, abs=1e-15)


def test_degenerate_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division by a zero variance
        same = delong_test(SCORES_A, SCORES_A, LABELS)
        assert (same["difference"], same["z"], same["p_value"], same["low"], same["high"]) == (0.0, 0.0, 1.0, 0, 0)
        # a separates perfectly (components all 1), b is constant (all 1/2): a non-zero difference of zero variance
        perfect = delong_test(LABELS.astype(float), np.ones(6), LABELS)
        assert perfect["difference"] == 0.5 and perfect["p_value"] == 0.0 and perfect["z"] == math.inf


def test_delong_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 normal and 2 anomalous"):
        delong_auroc_variance([0.1, 0.2, 0.3], [0, 0, 1])
    with pytest.raises(ValueError, match="differ in size"):
        delong_test(SCORES_A, SCORES_B[:5], LABELS)
    with pytest.raises(ValueError, match="level"):
        delong_test(SCORES_A, SCORES_B, LABELS, level=1.0)
    with pytest.raises(ValueError, match="NaN"):
        delong_test(np.r_[SCORES_A[:5], np.nan], SCORES_B, LABELS)


def test_variance_close_to_the_stratified_bootstrap():
    """300 normal and 300 anomalous images, two correlated binormal scores: DeLong's variances of AUROC(a) and of
    AUROC(a) - AUROC(b) against the variances over 2000 stratified bootstrap resamples (same class sizes, as
    DeLong's conditional variance). The bootstrap variance carries a ~3% sampling error (sqrt(2/1999)); measured
    ratios over seeds 0-4 were 0.95-1.04, hence a loose 15%."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(300), np.ones(300)].astype(np.int64)
    common = rng.normal(size=600)  # shared by both scores: the AUROCs are correlated
    a = common + 0.8 * rng.normal(size=600) + 1.0 * y
    b = common + 0.8 * rng.normal(size=600) + 0.8 * y
    idx = bootstrap_indices(y, resamples=2000, seed=0)
    boot_a, boot_b = resampled_auroc(a[idx], y[idx]), resampled_auroc(b[idx], y[idx])
    _, variance_a = delong_auroc_variance(a, y)
    assert variance_a == pytest.approx(boot_a.var(ddof=1), rel=0.15)
    result = delong_test(a, b, y)
    variance_diff = ((result["high"] - result["difference"]) / 1.959963984540054) ** 2
    assert variance_diff == pytest.approx((boot_a - boot_b).var(ddof=1), rel=0.15)
    # and the difference itself is the difference of the exact AUROCs
    assert result["difference"] == pytest.approx(roc_auc(a, y) - roc_auc(b, y), abs=1e-12)
