"""DeLong's test for two correlated AUROCs of the same images, with Sun and Xu's fast midrank algorithm.

DeLong, DeLong and Clarke-Pearson ("Comparing the areas under two or more correlated receiver operating
characteristic curves: a nonparametric approach", Biometrics 44, 1988) write the AUROC of ``m`` anomalous scores
``X_i`` and ``n`` normal scores ``Y_j`` as the Mann-Whitney statistic
``A = 1/(mn) sum_ij psi(X_i, Y_j)``, ``psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise``, and its structural
components

- ``V10(X_i) = 1/n sum_j psi(X_i, Y_j)`` (the fraction of normals an anomalous image outranks) and
- ``V01(Y_j) = 1/m sum_i psi(X_i, Y_j)`` (the fraction of anomalous images that outrank a normal one),

both averaging to ``A``. For scores ``a`` and ``b`` of the same images, ``S10`` and ``S01`` are the ``2 x 2``
sample covariances (denominators ``m - 1`` and ``n - 1``) of the components over the anomalous and over the normal
images, and ``S = S10 / m + S01 / n`` estimates the covariance of ``(A_a, A_b)``. The difference ``A_a - A_b`` has
variance ``S_aa + S_bb - 2 S_ab`` and ``z = (A_a - A_b) / sqrt(var)`` is asymptotically standard normal.

Sun and Xu ("Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
characteristic curves", IEEE Signal Processing Letters 21(11), 2014) obtain the components from midranks in
``O((m + n) log(m + n))`` instead of ``O(mn)``: with ``T_Z`` the midranks of all scores, ``T_X`` those of the
anomalous scores among themselves and ``T_Y`` those of the normal scores among themselves,
``V10(X_i) = (T_Z(X_i) - T_X(X_i)) / n`` and ``V01(Y_j) = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m``. Midranks count ties
one half, so ``A`` equals :func:`medad_monai.metrics.ranking.roc_auc`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from medad_monai.metrics.ranking import check_scores

__all__ = ["delong_auroc_variance", "delong_components", "delong_test"]


def delong_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by Sun and Xu's midranks: ``V10`` per anomalous image and ``V01`` per normal
    image, in the order they appear in ``scores``."""
    s, y = check_scores(scores, labels)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    if m < 2 or n < 2:
        # the sample covariances of the components divide by m - 1 and n - 1
        raise ValueError(f"DeLong's variance needs at least 2 normal and 2 anomalous images, got {n} and {m}")
    t_z = rankdata(np.r_[pos, neg])  # midranks: "average" is scipy's default method
    v10 = (t_z[:m] - rankdata(pos)) / n  # the rank among all minus the rank among the anomalous = normals below
    v01 = 1.0 - (t_z[m:] - rankdata(neg)) / m  # 1 - the fraction of anomalous images below (or tied, one half)
    return v10, v01


def delong_auroc_variance(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The AUROC (ties count one half) and DeLong's estimate of its variance, ``var(V10) / m + var(V01) / n`` with
    sample variances (denominators ``m - 1`` and ``n - 1``)."""
    v10, v01 = delong_components(scores, labels)
    return float(v10.mean()), float(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)


def delong_test(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, level: float = 0.95
) -> dict[str, float]:
    """DeLong's two-sided test of ``AUROC(a) = AUROC(b)`` for two scores of the same images.

    Returns:
        ``auroc_a``, ``auroc_b``, ``difference`` (a - b), ``low`` and ``high`` (the normal-approximation interval
        ``difference -/+ z_{(1+level)/2} sqrt(var)``), ``z`` and ``p_value`` (``2 (1 - Phi(|z|))``). When the
        difference has zero estimated variance (e.g. identical scores) the interval is the difference itself and
        ``z``, ``p_value`` are 0 and 1 if the difference is 0, else +-inf and 0.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a, y = check_scores(scores_a, labels)
    b, _ = check_scores(scores_b, labels)
    if a.shape != b.shape:
        raise ValueError(f"scores_a {a.shape} and scores_b {b.shape} differ in size")
    v10_a, v01_a = delong_components(a, y)
    v10_b, v01_b = delong_components(b, y)
    auroc_a, auroc_b = float(v10_a.mean()), float(v10_b.mean())
    difference = auroc_a - auroc_b
    # S_aa + S_bb - 2 S_ab is the sample variance of the components' differences: computed that way it is
    # non-negative and exactly 0 for identical scores (no cancellation of three rounded covariances)
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    variance = float(d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size)
    if variance > 0.0:
        sd = variance**0.5
        z = difference / sd
        p_value = float(2.0 * norm.sf(abs(z)))
        half = float(norm.ppf(0.5 + level / 2.0)) * sd
    else:
        z = 0.0 if difference == 0.0 else float(np.copysign(np.inf, difference))
        p_value = 1.0 if difference == 0.0 else 0.0
        half = 0.0
    return {
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "difference": difference,
        "low": difference - half,
        "high": difference + half,
        "z": float(z),
        "p_value": p_value,
    }
