"""Choose among several anomaly scores without labels: normals held out from training against an unlabeled pool.

If the pool holds anomalies at rate ``pi`` and its normals look like the held-out normals, a score's AUROC of
"pool" against "normal" is ``pi * AUROC(anomalous vs normal) + (1 - pi) / 2``: increasing in the score's true
AUROC, so ranking scores by it needs no labels. Both groups must be unseen by every model that produced the
scores (a model trained on the pool recognises the pool, normals included, and would be favoured for that).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medad_monai.metrics.ranking import roc_auc

__all__ = ["pool_separation", "select_score"]


def pool_separation(normal: Mapping[str, np.ndarray], pool: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUROC of each score for ``pool`` (positives) against ``normal`` (negatives), for the names in both."""
    out: dict[str, float] = {}
    for name in normal:
        if name in pool:
            s_n, s_p = np.asarray(normal[name], np.float64).ravel(), np.asarray(pool[name], np.float64).ravel()
            if s_n.size == 0 or s_p.size == 0:
                raise ValueError(f"score {name!r}: both the normal and the pool scores are needed")
            labels = np.r_[np.zeros(s_n.size, np.int64), np.ones(s_p.size, np.int64)]
            out[name] = roc_auc(np.r_[s_n, s_p], labels)
    return out


def select_score(criteria: Mapping[str, float], order: Sequence[str], fallback: str, min_criterion: float = 0.5) -> str:
    """The name in ``order`` with the largest criterion; ties go to the earlier name. When no criterion exceeds
    ``min_criterion`` (chance, for :func:`pool_separation`), no score is shown to separate anything and ``fallback``
    is returned. The rule is fixed before any data is seen."""
    candidates = [n for n in order if n in criteria and np.isfinite(criteria[n])]
    if not candidates:
        return fallback
    best = max(candidates, key=lambda n: (criteria[n], -order.index(n)))
    return best if criteria[best] > min_criterion else fallback
