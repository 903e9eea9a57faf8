"""Active learning for anomaly review: which unlabeled study should the radiologist look at next.

* ``most_anomalous``: the unreviewed study with the highest score under the current model (review likely
  findings first);
* ``nearest_threshold``: the one whose score is closest to the model's calibrated threshold (the model is least
  sure of it, so a verdict on it teaches the most).

Scores come from :class:`~medad_monai.inference.StudyRanker`: cached per study (path, modification time, size) and
model version in ``<studies>/.medad/<bundle>_scores.json``, so a request scores only new or changed studies, and
retraining the model invalidates the cache.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.strategy import Strategy

from medad_monai.inference import BundleLoadError, ScoringOptions, StudyRanker
from medad_monai.label.datastore import ReviewStatus, studies_by_status
from medad_monai.label.models import ServedBundles, bundle_has_model

__all__ = ["STRATEGIES", "AnomalyRankingStrategy"]

logger = logging.getLogger("medad_monai")

STRATEGIES = {
    "most_anomalous": "Serve the unreviewed study the model scores as most anomalous",
    "nearest_threshold": "Serve the unreviewed study whose score is nearest the decision threshold (least certain)",
}


class AnomalyRankingStrategy(Strategy):
    """Rank the datastore's unreviewed studies with one bundle's model.

    Args:
        strategy: ``"most_anomalous"`` or ``"nearest_threshold"``.
        bundles: bundle folders by name; the request's ``model`` picks one, else ``default_model``, else the first
            bundle that has a trained model at the time of the request.
        served: the app's shared :class:`~medad_monai.label.models.ServedBundles`.
        cache_dir: where the score caches live.
        default_model: the bundle used when the request names none (``None``: the first trained one).
        device: where scoring runs.
        scoring: the :class:`~medad_monai.inference.ScoringOptions` studies are scored with (default: its
            defaults).
    """

    def __init__(
        self,
        strategy: str,
        bundles: dict[str, Path],
        served: ServedBundles,
        cache_dir: str | Path,
        default_model: str | None = None,
        device: str = "cpu",
        scoring: ScoringOptions | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        default = f"'{default_model}'" if default_model else "the first trained bundle"
        super().__init__(f"{STRATEGIES[strategy]} (model: request 'model', default {default})")
        self.strategy, self.bundles, self.served = strategy, dict(bundles), served
        self.cache_dir, self.default_model, self.device = Path(cache_dir), default_model, device
        self.scoring = scoring if scoring is not None else ScoringOptions()

    def ranker(self, model_name: str) -> StudyRanker:
        """A ranker over the cached scores of bundle ``model_name``'s current model."""
        if model_name not in self.bundles:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"no anomaly bundle '{model_name}'; served: {sorted(self.bundles)}"
            )
        try:
            model = self.served.get(self.bundles[model_name], device=self.device)
        except BundleLoadError as e:
            raise MONAILabelException(MONAILabelError.APP_ERROR, str(e)) from e
        return StudyRanker.for_model(model, self.cache_dir / f"{model_name}_scores.json", **self.scoring.as_kwargs())

    def model_name(self, request: dict[str, Any]) -> str:
        """The bundle that ranks: the request's ``model``, else the default, else the first trained bundle."""
        name = request.get("model") or self.default_model
        if name:
            return str(name)
        trained = [n for n, p in self.bundles.items() if bundle_has_model(p)]
        if not trained:
            raise MONAILabelException(
                MONAILabelError.APP_ERROR,
                f"no served bundle has a trained model yet ({sorted(self.bundles)}); train one first "
                "(POST /train/<name>)",
            )
        return trained[0]

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any] | None:
        model_name = self.model_name(request)
        candidates = studies_by_status(datastore)[ReviewStatus.UNLABELED]
        if not candidates:
            return None
        paths = {datastore.get_image_uri(i): i for i in candidates}
        ranker = self.ranker(model_name)
        try:
            ranked = ranker.most_anomalous(list(paths)) if self.strategy == "most_anomalous" else None
            if ranked is None:
                ranked = ranker.nearest_threshold(list(paths))
        except ValueError as e:  # an uncalibrated model has no threshold to be near
            raise MONAILabelException(MONAILabelError.APP_ERROR, f"{model_name}: {e}") from e
        if ranker.errors:
            logger.warning(f"{self.strategy}: {len(ranker.errors)} study(ies) could not be scored: {ranker.errors}")
        if not ranked:
            return None
        path, score = ranked[0]
        logger.info(f"{self.strategy} ({model_name}): {paths[path]} score {score:.6g} of {len(ranked)} ranked")
        return {
            "id": paths[path],
            "score": score,
            "threshold": ranker.threshold if math.isfinite(ranker.threshold) else None,  # JSON has no NaN
            "strategy": self.strategy,
            "model": model_name,
            "model_version": ranker.cache.model_version,
            "ranked": len(ranked),
            "unscorable": sorted(paths[p] for p in ranker.errors if p in paths),
        }
