"""Reconstruction losses of DDAD's autoencoder backbones (Cai et al., MedIA 2023, §3.2 and Eq. 9)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HeteroscedasticLoss", "heteroscedastic_loss"]


def heteroscedastic_loss(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AE-U loss: ``mean(exp(-logvar) * (mean - x)^2) + mean(logvar)`` (MedIA 2023 Eq. 9, official ``AE_trainer``).

    The network predicts a per-pixel log variance; pixels it cannot reconstruct are down-weighted at the price of
    the ``logvar`` penalty.
    """
    return torch.mean(torch.exp(-logvar) * (mean - target) ** 2) + torch.mean(logvar)


class HeteroscedasticLoss(nn.Module):
    """Module form of :func:`heteroscedastic_loss` taking the AE-U output ``(B, 2, H, W)`` (mean, log variance)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean, logvar = output[:, :1], output[:, 1:2]
        return heteroscedastic_loss(mean, logvar, target)
