"""Cosine knowledge-distillation losses.

* :func:`cosine_distillation_loss` is the reverse-distillation objective (Deng & Li, "Anomaly Detection via
  Reverse Distillation from One-Class Embedding", CVPR 2022, Eq. 2 as implemented in the official
  ``main.py::loss_fucntion``): every feature map is flattened to one ``C*h*w`` vector per image, and the loss is
  ``sum_k mean_b [1 - cos(vec(a_k[b]), vec(b_k[b]))]``. D²4FAD (Dong et al., "Dual Distillation for Few-Shot
  Anomaly Detection", ICLR 2026; official ``main.py::loss_fucntion``) uses the same function for both its
  student self-distillation (query vs. learn-to-weight prototype) and teacher-student distillation terms.
* :func:`pixelwise_cosine_distillation_loss` is the per-pixel variant (RD, Eq. 1-2 written per location):
  ``sum_k mean_{b,h,w} [1 - cos_c(a_k[b,:,h,w], b_k[b,:,h,w])]``; it matches the inference-time anomaly map
  (:func:`medad_monai.anomaly_maps.cosine_distance_map`) more closely.

Both are TorchScript-scriptable and take lists of ``(B, C_k, h_k, w_k)`` tensors (one per scale).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CosineDistillationLoss", "cosine_distillation_loss", "pixelwise_cosine_distillation_loss"]


def _check_lists(a: list[Tensor], b: list[Tensor], name: str) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"{name}: expected two non-empty feature lists of equal length, got {len(a)} and {len(b)}")
    for i in range(len(a)):
        if a[i].shape != b[i].shape:
            raise ValueError(f"{name}: shape mismatch at scale {i}: {list(a[i].shape)} vs {list(b[i].shape)}")


def cosine_distillation_loss(a: list[Tensor], b: list[Tensor], eps: float = 1e-8) -> Tensor:
    """Flattened-map cosine loss of RD (Deng & Li 2022, Eq. 2) and D²4FAD (SSD and TSD terms).

    ``sum over scales k of mean over batch of 1 - cos(flatten(a_k[b]), flatten(b_k[b]))``, where ``flatten``
    joins channels and positions into one vector per image (official ``a[item].view(a[item].shape[0], -1)``).

    Args:
        a: per-scale tensors ``(B, ...)``.
        b: matching tensors of the same shapes.
        eps: norm floor of :func:`torch.nn.functional.cosine_similarity`.

    Returns:
        scalar loss (a sum over scales, so its range is ``[0, 2 * len(a)]``).
    """
    _check_lists(a, b, "cosine_distillation_loss")
    loss = torch.zeros((), dtype=a[0].dtype, device=a[0].device)
    for i in range(len(a)):
        cos = F.cosine_similarity(a[i].reshape(a[i].shape[0], -1), b[i].reshape(b[i].shape[0], -1), dim=1, eps=eps)
        loss = loss + (1.0 - cos).mean()
    return loss


def pixelwise_cosine_distillation_loss(a: list[Tensor], b: list[Tensor], eps: float = 1e-8) -> Tensor:
    """Per-pixel cosine loss (RD, Deng & Li 2022, Eq. 1-2 per location; D²4FAD inference distance).

    ``sum over scales k of mean over (batch, h, w) of 1 - cos_channels(a_k[b, :, h, w], b_k[b, :, h, w])``.

    Args:
        a: per-scale tensors ``(B, C, h, w)``.
        b: matching tensors of the same shapes.
        eps: norm floor of :func:`torch.nn.functional.cosine_similarity`.

    Returns:
        scalar loss.
    """
    _check_lists(a, b, "pixelwise_cosine_distillation_loss")
    loss = torch.zeros((), dtype=a[0].dtype, device=a[0].device)
    for i in range(len(a)):
        loss = loss + (1.0 - F.cosine_similarity(a[i], b[i], dim=1, eps=eps)).mean()
    return loss


class CosineDistillationLoss(nn.Module):
    """Module wrapper of the two cosine losses, for MONAI/Ignite configs.

    Args:
        per_pixel: ``False`` for the flattened RD/D²4FAD loss, ``True`` for the per-pixel variant.
    """

    def __init__(self, per_pixel: bool = False) -> None:
        super().__init__()
        self.per_pixel = per_pixel

    def forward(self, a: list[Tensor], b: list[Tensor]) -> Tensor:
        if self.per_pixel:
            return pixelwise_cosine_distillation_loss(a, b)
        return cosine_distillation_loss(a, b)
