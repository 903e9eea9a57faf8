"""MemAE's memory-addressing entropy loss (Gong et al., ICCV 2019, Eq. 10; DDAD weight 0.0002)."""

from __future__ import annotations

import torch

__all__ = ["addressing_entropy"]


def addressing_entropy(attention: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean entropy ``-sum_i w_i log w_i`` of memory addressing weights ``(N, M)`` (sparse addressing is rewarded)."""
    return (-(attention * torch.log(attention + eps)).sum(dim=1)).mean()
