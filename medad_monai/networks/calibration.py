"""The validation-normal scores a model's threshold was calibrated on, stored in its weights.

The threshold buffer says where the model decides; a reviewer also needs what it came from: how many normals, how
spread, and which threshold another target specificity would need (``medad_monai.handlers.report``). Each network
keeps a fixed-size ``calibration_scores`` buffer (NaN-padded): a fixed shape lets MONAI's ``ckpt_export`` (which
copies only tensors of equal shape) and TorchScript carry it like any other buffer. Up to ``CAPACITY`` scores are
kept as they are (sorted); a larger calibration set is summarised by its ``CAPACITY`` quantiles at the mid-points
``(i + 0.5) / CAPACITY``, which is what a quantile or a bootstrap over the normals needs. Checkpoints from before the
buffer load with all NaN (no scores recorded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CALIBRATION_KEY",
    "CAPACITY",
    "calibration_scores",
    "fill_missing_calibration_scores",
    "register_calibration_scores",
    "set_calibration_scores",
]

CALIBRATION_KEY = "calibration_scores"
CAPACITY = 1024


def register_calibration_scores(module: nn.Module) -> None:
    """Register ``module``'s ``calibration_scores`` buffer (all NaN: not calibrated)."""
    module.register_buffer(CALIBRATION_KEY, torch.full((CAPACITY,), float("nan")))


def fill_missing_calibration_scores(state_dict: dict[str, Tensor], prefix: str) -> None:
    """Let a checkpoint from before the buffer load (call from ``_load_from_state_dict``): no scores recorded."""
    state_dict.setdefault(prefix + CALIBRATION_KEY, torch.full((CAPACITY,), float("nan")))


def set_calibration_scores(module: nn.Module, scores: Sequence[float] | np.ndarray) -> None:
    """Store the finite ``scores`` (sorted; their ``CAPACITY`` mid-point quantiles when there are more) in ``module``'s
    buffer, if it has one (a network without it is left alone)."""
    buffer = getattr(module, CALIBRATION_KEY, None)
    if not isinstance(buffer, Tensor):
        return
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    s = s[np.isfinite(s)]
    if s.size > CAPACITY:
        s = np.quantile(s, (np.arange(CAPACITY) + 0.5) / CAPACITY)
    values = torch.full((CAPACITY,), float("nan"), dtype=buffer.dtype)
    values[: s.size] = torch.as_tensor(s, dtype=buffer.dtype)
    buffer.copy_(values.to(buffer.device))


def calibration_scores(module: nn.Module) -> np.ndarray:
    """The recorded calibration scores of ``module`` (sorted, float64); empty when none were recorded."""
    buffer = getattr(module, CALIBRATION_KEY, None)
    if not isinstance(buffer, Tensor):
        return np.zeros(0)
    values = buffer.detach().cpu().double().numpy()
    return values[np.isfinite(values)]
