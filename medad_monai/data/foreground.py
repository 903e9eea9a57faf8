"""How much of an image is body: the foreground the volume serving core selects slices by.

A pixel is foreground when its intensity, scaled to [0, 1] (by a given window, else the image's own min-max), exceeds
``threshold``; holes are filled, so a dark lesion or a ventricle inside the body counts. The same rule measures the
normals a model is calibrated on (their smallest body fractions are recorded in the model, see
:mod:`medad_monai.networks.body_extent`) and the slices of a volume at serving time
(:func:`medad_monai.inference.volume.body_slices`), so a slice is scored only when it shows as much body as the
images the model knows.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "FOREGROUND_THRESHOLD",
    "BODY_QUANTILE",
    "BODY_TOLERANCE",
    "body_extent",
    "foreground",
    "foreground_fraction",
]

FOREGROUND_THRESHOLD = 0.1
# a model's body extent: BODY_TOLERANCE times the BODY_QUANTILE quantile of its calibration normals' body fractions
BODY_QUANTILE = 0.05
BODY_TOLERANCE = 0.8


def foreground(
    image: np.ndarray, window: tuple[float, float] | None = None, threshold: float = FOREGROUND_THRESHOLD
) -> np.ndarray:
    """Boolean foreground of a 2D image ``(H, W)`` (channels already averaged), holes filled; or of a stack of them
    ``(..., H, W)``, holes filled in each 2D image on its own (one call; ``window`` default: the stack's min-max)."""
    img = np.asarray(image, dtype=np.float32)
    low, high = window if window is not None else (float(img.min()), float(img.max()))
    if high <= low:
        return np.zeros(img.shape, dtype=bool)
    # scipy's default 2D structure (the 4-neighbour cross) in the last two axes only: no connection between images
    structure = np.zeros((1,) * (img.ndim - 2) + (3, 3), dtype=bool)
    structure[(0,) * (img.ndim - 2)] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes((img - low) / (high - low) > threshold, structure=structure)


def foreground_fraction(images: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Body fraction of each image of a batch ``(B, C, H, W)``, each scaled by its own min-max."""
    batch = torch.as_tensor(images).detach().float().cpu().mean(1).numpy()
    return np.asarray([foreground(img, None, threshold).mean() for img in batch], dtype=np.float64)


def body_extent(fractions: np.ndarray, quantile: float = BODY_QUANTILE, tolerance: float = BODY_TOLERANCE) -> float:
    """The smallest body fraction a model is served on: ``tolerance`` times the ``quantile`` of the body fractions of
    the normals it was calibrated on."""
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if f.size == 0:
        raise ValueError("the body extent needs at least one image")
    return float(tolerance * np.quantile(f, quantile))
