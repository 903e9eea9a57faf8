"""Feature-regression distillation losses of PDD (Lu et al., "Manifold-Prior Diverse Distillation for Medical Anomaly
Detection", CVPR 2026; DESIGN §4).

* :func:`squared_error_loss` is ``L_kr`` (Student 1 against the fused teacher target ``f_b``): per level, the mean
  squared error over all elements; summed over levels.
* :func:`mse_cosine_loss` is ``L_prp`` (Student 2 against ``f_b``): per level ``alpha * MSE + beta * (1 - cos)``,
  with the cosine taken over channels at every pixel and averaged; summed over levels.

The per-level reduction (mean over elements) and the per-pixel cosine are our choices; the paper fixes the form of
the terms. Both take lists of ``(B, C_k, h_k, w_k)`` tensors (one per level).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse_cosine_loss", "squared_error_loss"]


def _check(a: list[Tensor], b: list[Tensor], name: str) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"{name}: expected two non-empty feature lists of equal length, got {len(a)} and {len(b)}")
    for i in range(len(a)):
        if a[i].shape != b[i].shape:
            raise ValueError(f"{name}: shape mismatch at level {i}: {list(a[i].shape)} vs {list(b[i].shape)}")


def squared_error_loss(student: list[Tensor], target: list[Tensor]) -> Tensor:
    """``L_kr = sum_k mean((s_k - t_k)^2)``."""
    _check(student, target, "squared_error_loss")
    loss = torch.zeros((), dtype=student[0].dtype, device=student[0].device)
    for i in range(len(student)):
        loss = loss + F.mse_loss(student[i], target[i])
    return loss


def mse_cosine_loss(
    student: list[Tensor], target: list[Tensor], alpha: float = 1.0, beta: float = 1.0, eps: float = 1e-8
) -> Tensor:
    """``L_prp = sum_k [alpha * mean((s_k - t_k)^2) + beta * mean_{b,h,w}(1 - cos_c(s_k, t_k))]``."""
    _check(student, target, "mse_cosine_loss")
    loss = torch.zeros((), dtype=student[0].dtype, device=student[0].device)
    for i in range(len(student)):
        cos = F.cosine_similarity(student[i], target[i], dim=1, eps=eps)
        loss = loss + alpha * F.mse_loss(student[i], target[i]) + beta * (1.0 - cos).mean()
    return loss
