"""Calibrate a model's decision threshold on validation normals (never on test images)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from medad_monai.data.foreground import body_extent, foreground_fraction
from medad_monai.metrics.operating_points import quantile_threshold
from medad_monai.networks.body_extent import set_body_extent
from medad_monai.networks.calibration import set_calibration_scores
from medad_monai.networks.volume_threshold import clear_volume_calibration

__all__ = ["ThresholdCalibrator", "calibrate_threshold"]


def calibrate_threshold(network: nn.Module, normal_scores: np.ndarray, quantile: float = 0.95) -> float:
    """Set ``network.threshold`` to the ``quantile`` of ``normal_scores`` and record those scores in the network
    (:mod:`medad_monai.networks.calibration`), so that evaluation can report other operating points from them.

    A volume threshold the network carries (:mod:`medad_monai.networks.volume_threshold`) is cleared: it was measured
    on the weights before this calibration (a run continued from a calibrated checkpoint), and volumes fall back to
    the new image threshold until ``medad-monai calibrate_volumes`` measures it again."""
    value = quantile_threshold(normal_scores, quantile)
    network.threshold.fill_(value)
    set_calibration_scores(network, normal_scores)
    if clear_volume_calibration(network):
        logging.getLogger("medad_monai").warning(
            "the model's volume threshold was calibrated on its earlier weights and is cleared: 3D inputs are decided "
            "with the image threshold until `medad-monai calibrate_volumes` is run again"
        )
    return value


class ThresholdCalibrator:
    """Collects the image scores of an evaluator over validation normals and stores their ``quantile`` in
    ``network.threshold`` (a buffer, so ``model.pt`` and the exported model carry it), and the scores themselves in
    ``network.calibration_scores``. It also records the normals'
    body extent in ``network.body_fraction`` (:func:`~medad_monai.data.foreground.body_extent` of the input images'
    body fractions), which the volume serving core scores slices by.

    Args:
        network: model with a scalar ``threshold`` buffer (and optionally ``body_fraction``).
        quantile: high quantile of normal scores (thresholds come from validation normals only: no abnormal
            validation images exist).
        score_key: key of the image score in the decollated evaluator output.
        image_key: key of the input images in the evaluator's batch.
    """

    def __init__(
        self, network: nn.Module, quantile: float = 0.95, score_key: str = "score", image_key: str = "image"
    ) -> None:
        self.network, self.quantile, self.score_key, self.image_key = network, quantile, score_key, image_key
        self.scores: list[float] = []
        self.fractions: list[float] = []
        self.logger = logging.getLogger("medad_monai")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._calibrate)

    def _reset(self, engine: Engine) -> None:
        self.scores.clear()
        self.fractions.clear()

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for item in items:
            self.scores.extend(torch.as_tensor(item[self.score_key]).detach().cpu().reshape(-1).tolist())
        batch = engine.state.batch  # MONAI's workflows decollate it into a list of items
        inputs = batch if isinstance(batch, list) else [batch]
        for image in (b.get(self.image_key) for b in inputs if isinstance(b, dict)):
            if image is None:
                continue
            image = torch.as_tensor(image)
            self.fractions.extend(foreground_fraction(image if image.ndim == 4 else image[None]).tolist())

    def _calibrate(self, engine: Engine) -> None:
        value = calibrate_threshold(self.network, np.asarray(self.scores), self.quantile)
        engine.state.metrics["threshold"] = value
        self.logger.info(
            f"threshold = {value:.6g}: the {self.quantile:.3f} quantile of {len(self.scores)} validation-normal scores"
        )
        if self.fractions:
            extent = body_extent(np.asarray(self.fractions))
            set_body_extent(self.network, extent)
            engine.state.metrics["body_fraction"] = extent
            self.logger.info(f"body extent = {extent:.3f}: volume slices showing less body than this are not scored")
