"""Pixel-level AUROC of anomaly maps against lesion masks (localisation, as RD, PatchCore and PDD report it)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from ignite.engine import Engine, Events

from medad_monai.metrics.ranking import roc_auc

__all__ = ["PixelAUROC"]

logger = logging.getLogger("medad_monai")


class PixelAUROC:
    """Pool every test pixel of the map under ``map_key`` and the binary mask under ``mask_key`` over an evaluation
    epoch and store their AUROC in ``engine.state.metrics[metric_name]`` (attach before the report that reads it).

    The preprocessing gives normal images an all-zero mask (``CheckMaskSized``). An anomalous image whose mask is
    empty has no pixel ground truth (a dataset without lesion masks), so the metric is then left out (NaN, with
    a log line) rather than counting its lesion pixels as normal.

    Args:
        map_key: decollated output key of the anomaly map ``(1, H, W)``.
        mask_key: key of the mask at the map's size (the bundle's preprocessing resizes it with ``nearest``).
        label_key: key of the 0/1 image label.
        metric_name: name in ``engine.state.metrics``.
    """

    def __init__(
        self, map_key: str = "pred", mask_key: str = "mask", label_key: str = "label", metric_name: str = "pixel_auroc"
    ) -> None:
        self.map_key, self.mask_key, self.label_key, self.metric_name = map_key, mask_key, label_key, metric_name
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
                    f"pixel AUROC: map of size {tuple(amap.shape[-2:])} but mask of size {tuple(mask.shape[-2:])}"
                )
            if int(torch.as_tensor(item[self.label_key]).reshape(-1)[0]) == 1 and not mask.any():
                self.unmasked += 1
            self.maps.append(amap.reshape(-1, *amap.shape[-2:])[0].numpy().ravel())
            self.masks.append(mask.reshape(-1, *mask.shape[-2:])[0].numpy().ravel())

    def _compute(self, engine: Engine) -> None:
        value = float("nan")
        if self.unmasked:
            logger.info(f"pixel AUROC left out: {self.unmasked} anomalous image(s) without a lesion mask")
        elif self.masks and any(m.any() for m in self.masks):
            value = roc_auc(np.concatenate(self.maps), np.concatenate(self.masks).astype(np.int64))
        engine.state.metrics[self.metric_name] = value
