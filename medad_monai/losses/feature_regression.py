"""Feature-regression terms of PDD's distillation losses (Lu et al., CVPR 2026; official ``utils/losses.py``).

Both take lists of ``(B, C_k, h_k, w_k)`` feature maps (one per level) and sum a per-level term over the levels:

* :func:`level_mse` (official ``MSE_loss``): the mean squared error over all elements of the level;
* :func:`level_cosine` (official ``CosineLoss``): the batch mean of the cosine *similarity* between the flattened
  ``C*h*w`` maps of each image (PDD's prior-student term; the paper's ``L_prp`` uses ``1 - cos``).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["level_cosine", "level_mse"]


def _check(a: list[Tensor], b: list[Tensor], name: str) -> None:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"{name}: expected two non-empty feature lists of equal length, got {len(a)} and {len(b)}")
    for i in range(len(a)):
        if a[i].shape != b[i].shape:
            raise ValueError(f"{name}: shape mismatch at level {i}: {list(a[i].shape)} vs {list(b[i].shape)}")


def level_mse(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """``sum_k mean((a_k - b_k)^2)``."""
    _check(a, b, "level_mse")
    loss = torch.zeros((), dtype=a[0].dtype, device=a[0].device)
    for x, y in zip(a, b):
        loss = loss + F.mse_loss(x, y)
    return loss


def level_cosine(a: list[Tensor], b: list[Tensor], eps: float = 1e-8) -> Tensor:
    """``sum_k mean_b cos(vec(a_k[b]), vec(b_k[b]))``."""
    _check(a, b, "level_cosine")
    loss = torch.zeros((), dtype=a[0].dtype, device=a[0].device)
    for x, y in zip(a, b):
        loss = loss + F.cosine_similarity(x.flatten(1), y.flatten(1), dim=1, eps=eps).mean()
    return loss
