"""Diversity loss between two students (PDD: Lu et al., "Manifold-Prior Diverse Distillation for Medical Anomaly
Detection", CVPR 2026; loss between Student 1 and Student 2).

The two students' features at level ``k`` are compared with the cosine similarity over channels at every pixel.
Shallow levels are pushed apart, deep levels are kept related, both through hinges:

* shallow level: ``max(0, cos - tau_low)`` (penalises similarity above ``tau_low``, default 0.75);
* deep level: ``max(0, tau_high - cos)`` (penalises similarity below ``tau_high``, default 0.30).

The paper reports ``tau_high = 0.30``, ``tau_low = 0.75`` as best on HeadCT. Which levels count as shallow or deep,
and whether the hinge acts per pixel (default) or on the per-image mean similarity, are our choices (options).
The result is the sum over the selected levels of the mean hinge value.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiversityLoss", "diversity_loss", "hinge_deep", "hinge_shallow"]


def hinge_shallow(cos: Tensor, tau_low: float) -> Tensor:
    """``max(0, cos - tau_low)`` element-wise: zero while the students disagree enough (shallow levels)."""
    return torch.clamp(cos - tau_low, min=0.0)


def hinge_deep(cos: Tensor, tau_high: float) -> Tensor:
    """``max(0, tau_high - cos)`` element-wise: zero while the students agree enough (deep levels)."""
    return torch.clamp(tau_high - cos, min=0.0)


def diversity_loss(
    feats_1: list[Tensor],
    feats_2: list[Tensor],
    shallow_levels: Sequence[int] = (0, 1),
    deep_levels: Sequence[int] = (2,),
    tau_low: float = 0.75,
    tau_high: float = 0.30,
    per_pixel: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """PDD diversity loss between two students' multi-level features.

    Args:
        feats_1: Student 1 features, one ``(B, C_k, h_k, w_k)`` tensor per level (shallow first).
        feats_2: Student 2 features of the same shapes.
        shallow_levels: level indices that get ``max(0, cos - tau_low)``.
        deep_levels: level indices that get ``max(0, tau_high - cos)``.
        tau_low: shallow-level similarity ceiling (paper, HeadCT: 0.75).
        tau_high: deep-level similarity floor (paper, HeadCT: 0.30).
        per_pixel: ``True``: cosine over channels at each pixel, hinge per pixel, mean over batch and pixels.
            ``False``: cosine of the flattened ``C*h*w`` maps per image, hinge per image, mean over the batch.
        eps: norm floor of :func:`torch.nn.functional.cosine_similarity`.

    Returns:
        scalar: the sum over the selected levels of the mean hinge value.
    """
    if len(feats_1) != len(feats_2) or len(feats_1) == 0:
        raise ValueError(
            f"diversity_loss: expected two non-empty lists of equal length, got {len(feats_1)}, {len(feats_2)}"
        )
    overlap = set(shallow_levels) & set(deep_levels)
    if overlap:
        raise ValueError(f"diversity_loss: levels {sorted(overlap)} are both shallow and deep")
    for k in list(shallow_levels) + list(deep_levels):
        if not 0 <= k < len(feats_1):
            raise ValueError(f"diversity_loss: level {k} out of range for {len(feats_1)} levels")
    loss = torch.zeros((), dtype=feats_1[0].dtype, device=feats_1[0].device)
    for k in range(len(feats_1)):
        if k not in shallow_levels and k not in deep_levels:
            continue
        a, b = feats_1[k], feats_2[k]
        if per_pixel:
            cos = F.cosine_similarity(a, b, dim=1, eps=eps)
        else:
            cos = F.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1, eps=eps)
        hinge = hinge_shallow(cos, tau_low) if k in shallow_levels else hinge_deep(cos, tau_high)
        loss = loss + hinge.mean()
    return loss


class DiversityLoss(nn.Module):
    """Module form of :func:`diversity_loss` (same arguments, fixed at construction)."""

    def __init__(
        self,
        shallow_levels: Sequence[int] = (0, 1),
        deep_levels: Sequence[int] = (2,),
        tau_low: float = 0.75,
        tau_high: float = 0.30,
        per_pixel: bool = True,
    ) -> None:
        super().__init__()
        self.shallow_levels = tuple(int(k) for k in shallow_levels)
        self.deep_levels = tuple(int(k) for k in deep_levels)
        self.tau_low, self.tau_high, self.per_pixel = float(tau_low), float(tau_high), bool(per_pixel)

    def forward(self, feats_1: list[Tensor], feats_2: list[Tensor]) -> Tensor:
        return diversity_loss(
            feats_1, feats_2, self.shallow_levels, self.deep_levels, self.tau_low, self.tau_high, self.per_pixel
        )
