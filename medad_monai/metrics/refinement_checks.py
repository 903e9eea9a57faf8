"""Label-free checks of a learned refinement of anomaly maps (DDAD's ASR-Net, MedIA 2023 §3.4).

ASR-Net learns to segment synthetic anomalies from discrepancy maps. Two things can make what it learns useless on
real lesions, and both can be measured without a single labelled lesion:

* :func:`pixel_separation`: the synthetic anomalies must leave a trace in the maps ASR-Net reads. If the pixel
  AUROC of a map against the synthetic masks is about 0.5, ASR-Net can only learn where patches tend to be.
* :func:`probe_response`: the refined probability should not fall when a discrepancy rises beyond the range seen
  in training (a real lesion often exceeds every synthetic one). A disc of growing discrepancy is added to the
  maps of normal images and the mean probability inside it is read at each level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from medad_monai.metrics.ranking import roc_auc

__all__ = ["disc_mask", "is_non_decreasing", "pixel_separation", "probe_response"]


def pixel_separation(maps: Mapping[str, Tensor], masks: Tensor) -> dict[str, float]:
    """Pixel AUROC of each map ``(N, 1, H, W)`` against binary ``masks`` ``(N, 1, H, W)``; NaN without both
    classes."""
    y = (masks > 0.5).flatten().cpu().numpy().astype(np.int64)
    if y.min() == y.max():
        return {name: float("nan") for name in maps}
    return {name: roc_auc(m.detach().flatten().float().cpu().numpy(), y) for name, m in maps.items()}


def disc_mask(height: int, width: int, radius: float) -> Tensor:
    """``(1, 1, H, W)`` float mask of a centred disc of ``radius`` (a fraction of the width)."""
    y, x = torch.meshgrid(torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2, indexing="ij")
    return ((y**2 + x**2) <= (radius * width) ** 2).float()[None, None]


@torch.no_grad()
def probe_response(
    refine: Callable[[Tensor], Tensor],
    background: Tensor,
    scale: Tensor,
    levels: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
    radius: float = 0.15,
) -> list[float]:
    """Mean refined probability inside a disc whose value rises by ``level * scale`` over ``background``.

    Args:
        refine: maps ``(N, C, H, W)`` -> anomaly probability ``(N, 1, H, W)``.
        background: input maps of normal images ``(N, C, H, W)``.
        scale: ``(C,)`` a per-channel unit, e.g. a high quantile of the channel on normal images.
        levels: disc heights in units of ``scale``.
        radius: disc radius as a fraction of the width.
    """
    disc = disc_mask(background.shape[-2], background.shape[-1], radius).to(background)
    unit = scale.to(background).view(1, -1, 1, 1)
    out = []
    for level in levels:
        p = refine(background + disc * (level * unit))
        out.append(float((p * disc).sum() / (disc.sum() * p.shape[0])))
    return out


def is_non_decreasing(values: Sequence[float], tolerance: float = 0.02) -> bool:
    """Whether no value falls more than ``tolerance`` below the largest value before it."""
    best = -np.inf
    for v in values:
        if v < best - tolerance:
            return False
        best = max(best, v)
    return True
