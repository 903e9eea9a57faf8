"""The volume-level threshold a model serves 3D inputs with, stored in its weights with the options it holds for.

A model's ``threshold`` is a high quantile of one 2D validation normal's score. A volume served slice by slice is
scored by a reduction over its body slices (by default their maximum over about twenty), which exceeds a one-image
quantile far more often than one image does: the demo DDAD and PDD bundles flag 3 of 8 normal head CT volumes with
their 2D thresholds. A threshold for volumes must come from normal volumes scored as serving scores them
(:mod:`medad_monai.inference.volume_calibration`), and it holds only for the scoring options it was calibrated with
(slicing axis, volume reduction and its ``top_k``, the relative body rule): served with other options, a volume
falls back to the image threshold (:func:`medad_monai.inference.volume.score_volume` says which one it used).

Each network keeps a fixed-size float64 ``volume_calibration`` buffer (all NaN until calibrated; fixed so that MONAI's
``ckpt_export`` and TorchScript carry it like any other buffer) holding :data:`FIELDS` in order. Checkpoints from
before the buffer load with NaN (no volume threshold).
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass

import torch
from torch import Tensor, nn

from medad_monai.scores import VOLUME_REDUCTIONS

__all__ = [
    "FIELDS",
    "VOLUME_KEY",
    "VolumeCalibration",
    "clear_volume_calibration",
    "fill_missing_volume_calibration",
    "register_volume_calibration",
    "set_volume_calibration",
    "volume_calibration",
]

VOLUME_KEY = "volume_calibration"


@dataclass(frozen=True)
class VolumeCalibration:
    """A volume threshold and what it was calibrated on.

    Attributes:
        threshold: the ``quantile`` of the normal volumes' scores.
        quantile: the target specificity on normal volumes.
        num_volumes: how many normal volumes it came from.
        axis, volume_reduction, top_k, min_relative_body: the scoring options of those scores
            (:class:`~medad_monai.inference.options.ScoringOptions`); the threshold holds only for these.
    """

    threshold: float
    quantile: float
    num_volumes: int
    axis: int
    volume_reduction: str
    top_k: int
    min_relative_body: float

    def holds_for(self, axis: int, volume_reduction: str, top_k: int, min_relative_body: float) -> bool:
        """Whether volumes scored with these options (those of
        :class:`~medad_monai.inference.options.ScoringOptions`) are comparable with this threshold: ``top_k``
        matters only for the ``topk`` reduction, and the axis is compared modulo 3, as ``score_volume`` slices."""
        return (
            self.axis % 3 == axis % 3
            and self.volume_reduction == volume_reduction
            and (self.volume_reduction != "topk" or self.top_k == top_k)
            and math.isclose(self.min_relative_body, float(min_relative_body), abs_tol=1e-6)
        )

    def to_tensor(self) -> Tensor:
        values = astuple(self)
        index = VOLUME_REDUCTIONS.index(self.volume_reduction)
        return torch.tensor([*values[:4], index, *values[5:]], dtype=torch.float64)


FIELDS = tuple(VolumeCalibration.__dataclass_fields__)


def register_volume_calibration(module: nn.Module) -> None:
    """Register ``module``'s ``volume_calibration`` buffer (all NaN: no volume threshold)."""
    # float64: the threshold and the options read back exactly as they were calibrated
    module.register_buffer(VOLUME_KEY, torch.full((len(FIELDS),), float("nan"), dtype=torch.float64))


def fill_missing_volume_calibration(state_dict: dict[str, Tensor], prefix: str) -> None:
    """Let a checkpoint from before the buffer load (call from ``_load_from_state_dict``): no volume threshold."""
    state_dict.setdefault(prefix + VOLUME_KEY, torch.full((len(FIELDS),), float("nan"), dtype=torch.float64))


def set_volume_calibration(module: nn.Module, calibration: VolumeCalibration) -> None:
    """Store ``calibration`` in ``module``'s buffer.

    Raises:
        ValueError: when ``module`` has no ``volume_calibration`` buffer (a network from before it, or another one).
    """
    buffer = getattr(module, VOLUME_KEY, None)
    if not isinstance(buffer, Tensor):
        raise ValueError(f"{type(module).__name__} has no {VOLUME_KEY!r} buffer to store a volume threshold in")
    buffer.copy_(calibration.to_tensor().to(buffer.dtype))


def clear_volume_calibration(module: nn.Module) -> bool:
    """Forget ``module``'s volume threshold (NaN again); returns whether there was one. Called whenever the image
    threshold is recalibrated (:func:`medad_monai.handlers.threshold.calibrate_threshold`): a training run that
    continues from a calibrated checkpoint changes the weights the volume threshold was measured on."""
    buffer = getattr(module, VOLUME_KEY, None)
    if not isinstance(buffer, Tensor):
        return False
    had = volume_calibration(module) is not None
    buffer.fill_(float("nan"))
    return had


def volume_calibration(module: nn.Module) -> VolumeCalibration | None:
    """The volume calibration stored in ``module``; ``None`` when there is none (NaN, or no buffer)."""
    buffer = getattr(module, VOLUME_KEY, None)
    if not isinstance(buffer, Tensor) or buffer.numel() != len(FIELDS):
        return None
    v = [float(x) for x in buffer.detach().cpu().double()]
    if not all(math.isfinite(x) for x in v):
        return None
    reduction = int(v[4])
    if not 0 <= reduction < len(VOLUME_REDUCTIONS):
        return None
    return VolumeCalibration(v[0], v[1], int(v[2]), int(v[3]), VOLUME_REDUCTIONS[reduction], int(v[5]), v[6])
