"""Frozen ImageNet teachers for feature-distillation anomaly detection.

:class:`WideResNetTeacher` is the WideResNet50-2 encoder used by reverse distillation (Deng & Li, CVPR 2022;
official ``resnet.py::wide_resnet50_2``) and D²4FAD (Dong et al., ICLR 2026; same file, whose ``_forward_impl``
returns ``layer4`` plus ``[layer1, layer2, layer3]``). It is the torchvision architecture with the classifier
removed; the weights are torchvision's ``Wide_ResNet50_2_Weights.IMAGENET1K_V1`` (the same URL as the official
code's ``model_urls['wide_resnet50_2']``).
"""

import logging
import os
import urllib.request

import torch
from torch import Tensor, nn
from torchvision.models import Wide_ResNet50_2_Weights, wide_resnet50_2

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
WRN50_2_IMAGENET_URL: str = Wide_ResNet50_2_Weights.IMAGENET1K_V1.url
WRN50_2_IMAGENET_FILENAME: str = os.path.basename(WRN50_2_IMAGENET_URL)  # wide_resnet50_2-95faca4d.pth

# A HEAD request with this timeout runs before the download so that a firewalled machine (packets dropped, no
# DNS error) fails in seconds instead of hanging in urllib's untimed urlopen.
_PROBE_TIMEOUT_S = 10.0


def imagenet_weights_cache_path() -> str:
    """Where torch hub keeps (and looks for) ``wide_resnet50_2-95faca4d.pth``: ``torch.hub.get_dir()/checkpoints``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WRN50_2_IMAGENET_FILENAME)


def _download_imagenet_state_dict(url: str) -> dict[str, Tensor]:
    """Download (into the torch hub cache) and load the ImageNet weights; network errors propagate as OSError."""
    urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_PROBE_TIMEOUT_S).close()
    return torch.hub.load_state_dict_from_url(
        url, progress=True, check_hash=True, map_location="cpu", weights_only=True
    )


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


def _auto_imagenet_or_random() -> tuple[dict[str, Tensor] | None, str]:
    """``"auto"``: ImageNet weights when cached or downloadable (probe of a few seconds), else random init.

    The fallback logs a WARNING that the results are not comparable to the paper (Dong et al., ICLR 2026, and the
    official ``main.py`` use ``wide_resnet50_2(pretrained=True)``) and says how to provide the weights. Pretrained
    weights are never faked: the fallback is torchvision's random initialisation and is reported as such.
    """
    try:
        state_dict, description = load_wide_resnet50_2_state_dict("imagenet")
    except RuntimeError as err:
        logger.warning(
            "WideResNet50-2 teacher: ImageNet weights unavailable (%s). FALLING BACK TO A RANDOMLY INITIALISED "
            "TEACHER: results are NOT comparable to the paper's. To use the ImageNet teacher, place '%s' at '%s' "
            "(the torch hub cache, $TORCH_HOME) or set teacher_weights to a local .pth path.",
            str(err).split(". Place")[0],
            WRN50_2_IMAGENET_FILENAME,
            imagenet_weights_cache_path(),
        )
        return None, "random initialisation (teacher_weights='auto': ImageNet weights unavailable)"
    return state_dict, f"{description} (teacher_weights='auto')"


def load_wide_resnet50_2_state_dict(weights: str | None) -> tuple[dict[str, Tensor] | None, str]:
    """Resolve a ``weights`` spec to a state dict.

    Args:
        weights: ``"imagenet"`` (torchvision IMAGENET1K_V1 through the torch hub cache), ``"auto"`` (ImageNet if
            cached or downloadable, else random initialisation with a WARNING), a path to a local ``.pth`` state
            dict, or ``"random"``/``None`` (torchvision's random initialisation).

    Returns:
        ``(state_dict or None, human-readable description)``.

    Raises:
        RuntimeError: ImageNet weights are neither cached nor downloadable (message gives the cache path).
        FileNotFoundError: a local path that does not exist.
    """
    if weights is None or weights == "random":
        return None, "random initialisation"
    if weights == "auto":
        return _auto_imagenet_or_random()
    if weights == "imagenet":
        cache_path = imagenet_weights_cache_path()
        if os.path.isfile(cache_path):
            return torch.load(cache_path, map_location="cpu", weights_only=True), f"ImageNet ({cache_path})"
        try:
            state_dict = _download_imagenet_state_dict(WRN50_2_IMAGENET_URL)
        except OSError as err:  # urllib.error.URLError/HTTPError and socket timeouts are OSErrors
            raise RuntimeError(
                f"Could not download the ImageNet WideResNet50-2 teacher weights from {WRN50_2_IMAGENET_URL} "
                f"({err}). Place the file '{WRN50_2_IMAGENET_FILENAME}' at '{cache_path}' (the torch hub cache, "
                "controlled by $TORCH_HOME), or pass teacher weights as a local .pth path, or 'random' for a "
                "randomly initialised teacher."
            ) from err
        return state_dict, f"ImageNet (downloaded to {cache_path})"
    path = os.path.expanduser(str(weights))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Teacher weights file not found: '{path}'. Expected 'imagenet', 'random' or the path of a .pth state dict."
        )
    return _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path), f"local file {path}"


class WideResNetTeacher(nn.Module):
    """Frozen WideResNet50-2 feature extractor returning ``[layer1, ..., layer<num_layers>]``.

    Channels ``(256, 512, 1024, 2048)`` at strides ``(4, 8, 16, 32)`` (at 128 px: 32, 16, 8, 4 pixels).
    Parameters have ``requires_grad=False`` and the module stays in eval mode (BatchNorm running statistics) even
    when a parent calls ``.train()``, as the official RD/D²4FAD code keeps ``encoder.eval()`` during training.

    Args:
        weights: ``"imagenet"``, ``"auto"``, a local ``.pth`` path, or ``"random"``/``None``; see
            :func:`load_wide_resnet50_2_state_dict`.
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
