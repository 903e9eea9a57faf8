"""Frozen ImageNet teachers for feature-distillation anomaly detection.

:class:`WideResNetTeacher` is the WideResNet50-2 encoder used by reverse distillation (Deng & Li, CVPR 2022;
official ``resnet.py::wide_resnet50_2``) and D²4FAD (Dong et al., ICLR 2026; same file, whose ``_forward_impl``
returns ``layer4`` plus ``[layer1, layer2, layer3]``). It is the torchvision architecture with the classifier
removed; the weights are torchvision's ``Wide_ResNet50_2_Weights.IMAGENET1K_V1`` (the same URL as the official
code's ``model_urls['wide_resnet50_2']``).
"""

import logging
import os

import torch
from torch import Tensor, nn
from torchvision.models import wide_resnet50_2

from medad_monai.networks.weights import WRN50_2_IMAGENET, cache_path, resolve_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WRN50_2_IMAGENET_FILENAME",
    "WRN50_2_IMAGENET_URL",
    "WideResNetTeacher",
    "imagenet_weights_cache_path",
    "load_wide_resnet50_2_state_dict",
]

logger = logging.getLogger("medad_monai")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
WRN50_2_IMAGENET_URL: str = WRN50_2_IMAGENET.url
WRN50_2_IMAGENET_FILENAME: str = WRN50_2_IMAGENET.filename  # wide_resnet50_2-95faca4d.pth


def imagenet_weights_cache_path() -> str:
    """Where torch hub keeps (and looks for) ``wide_resnet50_2-95faca4d.pth``: ``torch.hub.get_dir()/checkpoints``."""
    return cache_path(WRN50_2_IMAGENET)


def _unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """Accept a plain state dict, a ``{"state_dict": ...}``/``{"model": ...}`` checkpoint and ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not contain a WideResNet50-2 state dict (a mapping of names to tensors)")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_wide_resnet50_2_state_dict(weights: str | os.PathLike[str] | None) -> tuple[dict[str, Tensor] | None, str]:
    """Resolve a ``weights`` spec (:func:`~medad_monai.networks.weights.resolve_weights`: ``"auto"``,
    ``"pretrained"``/``"imagenet"``, ``"random"``/``None`` or a path) and read the state dict.

    Returns:
        ``(state_dict or None for random initialisation, human-readable description)``.
    """
    path, description = resolve_weights(weights, WRN50_2_IMAGENET)
    if path is None:
        return None, description
    return _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path), description


class WideResNetTeacher(nn.Module):
    """Frozen WideResNet50-2 feature extractor returning ``[layer1, ..., layer<num_layers>]``.

    Channels ``(256, 512, 1024, 2048)`` at strides ``(4, 8, 16, 32)`` (at 128 px: 32, 16, 8, 4 pixels).
    Parameters have ``requires_grad=False`` and the module stays in eval mode (BatchNorm running statistics) even
    when a parent calls ``.train()``, as the official RD/D²4FAD code keeps ``encoder.eval()`` during training.

    Args:
        weights: ``"auto"``, ``"pretrained"``/``"imagenet"``, a local ``.pth`` path, or ``"random"``/``None``; see
            :mod:`medad_monai.networks.weights`.
        normalize: apply ImageNet mean/std normalisation to inputs in ``[0, 1]`` inside the module. D²4FAD feeds
            ``[0, 1]`` images without normalisation (its ``transforms.Normalize`` is commented out), PDD uses it.
        num_layers: how many stages ``forward`` computes and returns (4: D²4FAD feeds ``layer4`` to its student; 3:
            PDD and RD-style targets use ``layer1..3``, and ``layer4``, a fifth of the forward's arithmetic, is
            skipped). ``layer4``'s weights stay in the module so that state dicts keep one layout.
    """

    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 2048)
    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, weights: str | None = "imagenet", normalize: bool = False, num_layers: int = 4) -> None:
        super().__init__()
        if num_layers not in (1, 2, 3, 4):
            raise ValueError(f"WideResNetTeacher: num_layers must be 1..4, got {num_layers}")
        self.num_layers = int(num_layers)
        state_dict, description = load_wide_resnet50_2_state_dict(weights)
        net = wide_resnet50_2(weights=None)
        if state_dict is not None:
            # The classifier is not part of the teacher; accept state dicts with or without it.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state_dict, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"Teacher weights ({description}) do not match WideResNet50-2: missing keys {missing[:5]}, "
                    f"unexpected keys {unexpected[:5]}"
                )
        logger.info("WideResNet50-2 teacher weights: %s", description)
        self.weights_description = description
        # Same attribute names as torchvision so that torchvision state dicts load without renaming.
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.normalize = bool(normalize)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "WideResNetTeacher":
        """Ignore ``mode``: a frozen teacher always runs with BatchNorm running statistics."""
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``(B, 3, H, W)`` in ``[0, 1]`` (or already normalised when ``normalize=False``)."""
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        feats = [x]
        if self.num_layers > 1:
            x = self.layer2(x)
            feats.append(x)
        if self.num_layers > 2:
            x = self.layer3(x)
            feats.append(x)
        if self.num_layers > 3:
            feats.append(self.layer4(x))
        return feats
