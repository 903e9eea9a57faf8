"""Focal loss for ASR-Net (Lin et al., ICCV 2017; DDAD MedIA 2023 §3.4, gamma 2), and the refinement stage's loss
over every ASR head (:class:`RefinementLoss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medad_monai.losses.terms import TermsLoss

__all__ = ["FocalLoss", "RefinementLoss", "focal_loss"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Mean focal loss ``-(1 - p_t)^gamma * log(p_t)`` over pixels.

    Follows the official DDAD-ASR loss: softmax probabilities, a one-hot target clamped to
    ``[smooth / (C - 1), 1 - smooth]`` (label smoothing), ``p_t = <one_hot, p> + smooth``, no class weights.

    Args:
        logits: ``(B, C, H, W)`` class scores (softmax is applied here).
        target: ``(B, 1, H, W)`` or ``(B, H, W)`` integer class indices.
    """
    num_classes = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    target = target.long().reshape(target.shape[0], *logits.shape[2:])
    one_hot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)
    if smooth > 0:
        one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(self, gamma: float = 2.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.gamma, self.smooth = gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.smooth)


class RefinementLoss(TermsLoss):
    """DDAD's refinement stage (MedIA 2023 §3.4): the sum over the ASR heads (``r_intra``, and ``r_dual`` with a UDM)
    of the focal loss of their logits against the synthetic anomaly mask; terms ``focal_<head>``.

    Args:
        gamma: focusing parameter (2 in the paper).
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = float(gamma)

    def forward(self, pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """``pred``: ``{head: (B, 2, H, W) logits}``; ``target``: the ``(B, 1, H, W)`` synthetic anomaly mask."""
        if target is None:
            raise ValueError("RefinementLoss needs the synthetic anomaly mask as the target")
        losses = {f"focal_{name}": focal_loss(logits, target, self.gamma) for name, logits in pred.items()}
        return self._record(torch.stack(list(losses.values())).sum(), **losses)
