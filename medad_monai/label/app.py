"""The MONAI Label app serving medad-monai's anomaly bundles (``apps/medad/main.py`` subclasses it).

For every bundle folder under ``bundles`` (default: the repository's ``bundles/``) selected by ``models``:

* infer ``<name>``: the ``anomaly`` label at the model's calibrated threshold (Slicer lists it: segmentation type),
  with the score, threshold and decision in the result JSON; infer ``<name>_heatmap``: the float map as NIfTI;
* train ``<name>``: the bundle's ``train.json`` on the studies reviewed normal (:mod:`medad_monai.label.train`);

and two active-learning strategies over the unreviewed studies, ``most_anomalous`` and ``nearest_threshold``
(:mod:`medad_monai.label.strategy`).

Configuration (``monailabel start_server ... --conf KEY VALUE``):

=====================  =====================================================================================
``models``             ``all`` (default) or comma-separated bundle names (``ddad,pdd``)
``bundles``            folder holding the bundle folders (default: ``<repository>/bundles``)
``axis``               slicing axis for 3D volumes, 0/1/2 (default 2: axial for RAS-oriented NIfTI)
``volume_reduction``   volume score from slice scores: ``max`` (default), ``mean``, ``topk``
``min_relative_body``  score the slices with at least this fraction of the volume's largest slice's body (0.9)
``strategy_model``     the bundle the active-learning strategies rank with (default: the first trained one)
``device``             ``cpu``, ``cuda``... (default: CUDA when available)
``heatmap``            ``true`` (default) to add the ``<name>_heatmap`` infer tasks
=====================  =====================================================================================

Errors a client can act on (an unreadable study, a bundle without a trained model, bad options) come back as HTTP
errors whose ``detail`` names the study or bundle and the problem; the server keeps serving.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from medad_monai.inference import ScoringOptions
from medad_monai.label.infer import AnomalyInferTask
from medad_monai.label.models import ServedBundles
from medad_monai.label.strategy import STRATEGIES, AnomalyRankingStrategy
from medad_monai.label.train import AnomalyTrainTask

__all__ = ["AnomalyLabelApp", "find_bundles"]

logger = logging.getLogger("medad_monai")

REPO_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
_HTTP_STATUS = {MONAILabelError.INVALID_INPUT: 422, MONAILabelError.INFERENCE_ERROR: 409}


def find_bundles(folder: str | Path, models: str = "all") -> dict[str, Path]:
    """Bundle folders (with ``configs/inference.json``) under ``folder`` by name, filtered by ``models``.

    Raises:
        ValueError: naming the folder, when it holds no bundle, or a requested name is not one of them.
    """
    root = Path(folder).expanduser().resolve()
    found = (
        {p.name: p for p in sorted(root.iterdir()) if (p / "configs" / "inference.json").is_file()}
        if root.is_dir()
        else {}
    )
    if not found:
        raise ValueError(f"no MONAI bundle (a folder with configs/inference.json) under '{root}'")
    if models.strip().lower() in ("", "all"):
        return found
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ValueError(f"bundle(s) {missing} not found under '{root}'; available: {sorted(found)}")
    return {m: found[m] for m in wanted}


def _http_error(e: MONAILabelException) -> HTTPException:
    return HTTPException(status_code=_HTTP_STATUS.get(e.error, 500), detail=e.msg)


def _fraction(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}") from None


class AnomalyLabelApp(MONAILabelApp):
    """MONAI Label app for anomaly bundles; ``conf`` keys are listed in the module docstring."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundles = find_bundles(conf.get("bundles", str(REPO_BUNDLES)), conf.get("models", "all"))
        try:  # validated once, by ScoringOptions (medad_monai.inference.options)
            self.scoring = ScoringOptions(
                axis=int(conf.get("axis", 2)),
                volume_reduction=conf.get("volume_reduction", "max"),
                min_relative_body=_fraction(conf.get("min_relative_body", 0.9), "min_relative_body"),
            )
        except ValueError as e:
            raise ValueError(f"conf: {e}") from e
        self.axis = self.scoring.axis
        self.device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.strategy_model = conf.get("strategy_model") or None  # None: the first bundle with a trained model
        if self.strategy_model is not None and self.strategy_model not in self.bundles:
            raise ValueError(f"conf strategy_model '{self.strategy_model}' not served: {sorted(self.bundles)}")
        self.heatmap = str(conf.get("heatmap", "true")).lower() in ("1", "true", "yes")
        self.served = ServedBundles()
        local = not studies.startswith(("http://", "https://"))
        self.cache_dir = Path(studies if local else app_dir) / ".medad"
        logger.info(f"medad app: serving {sorted(self.bundles)} from {next(iter(self.bundles.values())).parent}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medad-monai",
            description="Anomaly detection (DDAD-ASR, D24FAD, PDD): anomaly labels, scores and review ordering",
            version="0.1.0",
            labels={"anomaly": 1},
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            infers[name] = AnomalyInferTask(path, self.served, output="mask", scoring=self.scoring)
            if self.heatmap:
                infers[f"{name}_heatmap"] = AnomalyInferTask(path, self.served, output="heatmap", scoring=self.scoring)
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        return {
            name: AnomalyTrainTask(path, self.conf, slice_cache=self.cache_dir / "slices", scoring=self.scoring)
            for name, path in self.bundles.items()
            if (path / "configs" / "train.json").is_file()
        }

    def init_strategies(self) -> dict[str, Strategy]:
        return {
            s: AnomalyRankingStrategy(
                s, self.bundles, self.served, self.cache_dir, self.strategy_model, self.device, self.scoring
            )
            for s in STRATEGIES
        }

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        request = dict(request)
        request.setdefault("device", self.device)
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            known = (datastore or self.datastore()).get_image_uri(image)
            if not known:
                raise HTTPException(status_code=404, detail=f"study '{image}' is not in the datastore")
        try:
            return super().infer(request, datastore)
        except MONAILabelException as e:
            logger.error(f"infer {request.get('model')} on '{image}': {e.msg}")
            raise _http_error(e) from e

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return super().next_sample(request)
        except MONAILabelException as e:
            logger.error(f"active learning {request.get('strategy')}: {e.msg}")
            raise _http_error(e) from e
