"""Two scores of the same test images compared: the AUROC difference by a paired bootstrap and by DeLong's test.

Used for the scores of one model (DDAD's maps against the one it serves) and for methods against each other (the
comparison with anomalib). Both tests pair the images: the bootstrap resamples images once for both scores
(:func:`~medad_monai.metrics.bootstrap.paired_bootstrap`), DeLong's test uses the covariance of the two AUROCs'
structural components (:func:`~medad_monai.metrics.delong.delong_test`). They answer the same question with
different assumptions (resampling vs asymptotic normality), so both are reported; with few images, trust the
bootstrap interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medad_monai.metrics.bootstrap import paired_bootstrap
from medad_monai.metrics.delong import delong_test

__all__ = ["compare_aurocs"]


def compare_aurocs(
    scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """``AUROC(a) - AUROC(b)``: one entry per test (``method`` "paired bootstrap" when ``resamples`` > 0, and
    "DeLong"), each with ``metric``, ``difference``, ``low``, ``high`` (95% interval) and ``p_value``."""
    entries = []
    if resamples > 0:
        test = paired_bootstrap(scores_a, scores_b, labels, "auroc", resamples, seed)
        entries.append({"metric": "auroc", "method": "paired bootstrap", **test})
    delong = delong_test(scores_a, scores_b, labels)
    entries.append(
        {
            "metric": "auroc",
            "method": "DeLong",
            **{key: float(delong[key]) for key in ("difference", "low", "high", "p_value")},
        }
    )
    return entries
