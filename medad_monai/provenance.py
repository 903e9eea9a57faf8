"""What every result is recorded with: the seed, the package versions and the machine."""

from __future__ import annotations

import platform
import random
from importlib import metadata
from typing import Any

import numpy as np
import torch

__all__ = ["package_versions", "provenance", "seed_everything"]

_PACKAGES = ("medad-monai", "monai", "torch", "torchvision", "pytorch-ignite", "numpy", "timm", "nibabel", "pydicom")


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape a result (``"not installed"`` when absent)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """A record to store beside every metric: seed, versions, Python, platform and device."""
    return {
        "seed": seed,
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        **extra,
    }


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (and MONAI's global determinism) and return the seed."""
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)
    return seed
