"""The body extent a model knows, stored in its weights: the smallest body fraction its calibration normals show.

2D anomaly models know the sections they were trained on; serving a volume slice by slice, a slice that shows much
less body (the top of a head, the end of a scan) looks unlike any training image and outscores a lesion. Each network
keeps a ``body_fraction`` buffer (NaN until calibrated; :func:`medad_monai.data.foreground.body_extent`), set where
its threshold is calibrated, and the serving core scores only the slices at or above it
(:func:`medad_monai.inference.volume.body_slices`). Checkpoints from before the buffer load with NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BODY_KEY", "fill_missing_body_extent", "register_body_extent", "set_body_extent"]

BODY_KEY = "body_fraction"


def register_body_extent(module: nn.Module) -> None:
    """Register ``module``'s ``body_fraction`` buffer (NaN: not calibrated)."""
    module.register_buffer(BODY_KEY, torch.tensor(float("nan")))


def fill_missing_body_extent(state_dict: dict[str, Tensor], prefix: str) -> None:
    """Let a checkpoint from before the buffer load (call from ``_load_from_state_dict``): its extent is unknown."""
    state_dict.setdefault(prefix + BODY_KEY, torch.tensor(float("nan")))


def set_body_extent(module: nn.Module, value: float) -> None:
    """Store ``value`` in ``module``'s buffer, if it has one (a network without it is left alone)."""
    buffer = getattr(module, BODY_KEY, None)
    if isinstance(buffer, Tensor):
        buffer.fill_(float(value))
