"""Pixel-level (localisation) metrics of anomaly maps against lesion masks: AUROC (as RD, PatchCore and PDD report
it), AP, the best Dice over thresholds (MedIAnomaly) and AUPRO up to FPR 0.3 (MVTec AD), see
:mod:`medad_monai.metrics.pixel`."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events

from medad_monai.metrics.pixel import aupro, best_dice, pixel_average_precision
from medad_monai.metrics.ranking import roc_auc

__all__ = ["PixelMetrics"]

logger = logging.getLogger("medad_monai")


class PixelMetrics:
    """Collect the map under ``map_key`` and the binary mask under ``mask_key`` of every test image over an
    evaluation epoch and store, in ``engine.state.metrics`` (attach before the report that reads them):

    - ``<prefix>_auroc``: AUROC of all pixels pooled (:func:`~medad_monai.metrics.ranking.roc_auc`);
    - ``<prefix>_ap``: their average precision (:func:`~medad_monai.metrics.pixel.pixel_average_precision`);
    - ``<prefix>_best_dice`` and ``<prefix>_best_dice_threshold``: the best Dice of ``map >= t`` over all
      thresholds and the ``t`` reaching it (:func:`~medad_monai.metrics.pixel.best_dice`, MedIAnomaly's BraTS metric);
    - ``<prefix>_aupro``: the normalised area under the per-region-overlap curve up to FPR ``fpr_limit``, regions
      being the 8-connected components of each mask (:func:`~medad_monai.metrics.pixel.aupro`, MVTec AD's AU-PRO).

    The maps are kept as float32 and the masks as bool ``(H, W)`` arrays (5 bytes a pixel; the masks' shapes are
    needed for the connected regions of AUPRO).

    The preprocessing gives normal images an all-zero mask (``CheckMaskSized``). An anomalous image whose mask is
    empty has no pixel ground truth (a dataset without lesion masks), so all the metrics are then left out (NaN,
    with a log line) rather than counting its lesion pixels as normal; so are they when no mask has a lesion pixel.

    Args:
        map_key: decollated output key of the anomaly map ``(1, H, W)``.
        mask_key: key of the mask at the map's size (the bundle's preprocessing resizes it with ``nearest``).
        label_key: key of the 0/1 image label.
        prefix: the metrics are named ``<prefix>_<metric>`` in ``engine.state.metrics``.
        fpr_limit: the false positive rate up to which the PRO curve is integrated.
    """

    METRICS = ("auroc", "ap", "best_dice", "best_dice_threshold", "aupro")

    def __init__(
        self,
        map_key: str = "pred",
        mask_key: str = "mask",
        label_key: str = "label",
        prefix: str = "pixel",
        fpr_limit: float = 0.3,
    ) -> None:
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.map_key, self.mask_key, self.label_key, self.prefix = map_key, mask_key, label_key, prefix
        self.fpr_limit = fpr_limit
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.unmasked = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._compute)

    def _reset(self, engine: Engine) -> None:
        self.maps, self.masks, self.unmasked = [], [], 0

    def _collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        outputs, inputs = (out, batch) if isinstance(out, list) else ([out], [batch])
        for item, data in zip(outputs, inputs):
            # MONAI's postprocessing leaves input keys (the mask) in the decollated batch, not in the output
            source = item if self.mask_key in item else data
            amap = torch.as_tensor(item[self.map_key]).detach().float().cpu()
            mask = torch.as_tensor(source[self.mask_key]).detach().cpu() > 0
            if amap.shape[-2:] != mask.shape[-2:]:
                raise ValueError(
                    f"pixel metrics: map of size {tuple(amap.shape[-2:])} but mask of size {tuple(mask.shape[-2:])}"
                )
            if int(torch.as_tensor(item[self.label_key]).reshape(-1)[0]) == 1 and not mask.any():
                self.unmasked += 1
            # the first channel, as (H, W): AUPRO labels the regions of each mask in 2-D
            self.maps.append(amap.reshape(-1, *amap.shape[-2:])[0].numpy())
            self.masks.append(mask.reshape(-1, *mask.shape[-2:])[0].numpy())

    def _compute(self, engine: Engine) -> None:
        values = dict.fromkeys(self.METRICS, float("nan"))
        if self.unmasked:
            logger.info(f"pixel metrics left out: {self.unmasked} anomalous image(s) without a lesion mask")
        elif self.masks and any(m.any() for m in self.masks):
            scores = np.concatenate([m.ravel() for m in self.maps])
            labels = np.concatenate([m.ravel() for m in self.masks])
            values["auroc"] = roc_auc(scores, labels)
            del scores, labels  # the pixel functions pool again; keep one pooled copy at a time
            values["ap"] = pixel_average_precision(self.maps, self.masks)
            values["best_dice"], values["best_dice_threshold"] = best_dice(self.maps, self.masks)
            values["aupro"] = aupro(self.maps, self.masks, self.fpr_limit)
        for name, value in values.items():
            engine.state.metrics[f"{self.prefix}_{name}"] = value
