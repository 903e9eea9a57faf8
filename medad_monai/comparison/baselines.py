"""anomalib's reverse distillation and PatchCore, driven on the bundle's own data (no Lightning engine).

Both baselines are anomalib's own torch models (``anomalib.models.image.*.torch_model``), trained with the recipe
of anomalib's Lightning modules:

- reverse distillation (Deng & Li, CVPR 2022): encoder WideResNet50-2 ``layer1..3``, anomalib's bottleneck and
  decoder, :class:`~anomalib.models.image.reverse_distillation.loss.ReverseDistillationLoss`, Adam ``lr=0.005``,
  ``betas=(0.5, 0.99)`` on decoder + bottleneck, anomaly map mode ``add`` (the Lightning module's default);
- PatchCore (Roth et al., CVPR 2022): WideResNet50-2 ``layer2+layer3`` patch features, one pass over the normals,
  k-center-greedy coreset of ``coreset_sampling_ratio=0.1``, ``num_neighbors=9``.

The images are the bundle's preprocessing at its ``image_size`` with 3 channels in ``[0, 1]``; anomalib's
pre-processor would normalise with the ImageNet mean/std, which :class:`ImageNetNormalized` does. The backbone is
given the same WideResNet50-2 weights as the bundles' teachers (torchvision's ImageNet weights, a local file, or
random initialisation), so that the comparison differs by method, not by backbone weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from medad_monai.networks.feature_cache import FeatureCache
from medad_monai.networks.teachers import IMAGENET_MEAN, IMAGENET_STD, load_wide_resnet50_2_state_dict

__all__ = [
    "BASELINES",
    "ImageNetNormalized",
    "build_baseline",
    "fit_patchcore",
    "fit_reverse_distillation",
    "load_backbone_weights",
    "reverse_distillation_features",
]

logger = logging.getLogger("medad_monai")

BASELINES: tuple[str, ...] = ("reverse_distillation", "patchcore")


def _require_anomalib() -> None:
    try:
        import anomalib  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the anomalib baselines need anomalib: pip install -e '.[anomalib]' (see the README)"
        ) from err


class ImageNetNormalized(nn.Module):
    """``model((x - mean) / std)`` for ``x`` in ``[0, 1]``: anomalib's default pre-processing, kept outside the
    anomalib model so both see the bundle's tensors. Returns ``(maps (B, 1, H, W), scores (B,))`` in eval mode and
    the wrapped model's training output in train mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """ImageNet mean/std normalisation of images in ``[0, 1]``."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> object:
        out = self.model(self.normalize(images))
        if self.training:
            return out
        return out.anomaly_map, out.pred_score.flatten()


def load_backbone_weights(extractor: nn.Module, weights: str | None) -> str:
    """Load WideResNet50-2 ``weights`` (see :func:`load_wide_resnet50_2_state_dict`) into an anomalib
    ``TimmFeatureExtractor``; returns a description. timm's ResNet has torchvision's parameter names; its
    ``features_only`` net stops at the last requested layer, so the deeper layers and the classifier are dropped."""
    state, description = load_wide_resnet50_2_state_dict(weights)
    if state is None:
        return description
    net = extractor.feature_extractor
    own = net.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"backbone weights ({description}) lack {len(missing)} parameters, e.g. {missing[:3]}")
    net.load_state_dict(state)
    return description


def build_baseline(name: str, image_size: int, weights: str | None) -> tuple[ImageNetNormalized, str]:
    """An untrained anomalib ``name`` (one of :data:`BASELINES`) with WideResNet50-2 ``weights``; returns the model
    and a description of the weights."""
    _require_anomalib()
    if name == "reverse_distillation":
        from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
        from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

        model = ReverseDistillationModel(
            backbone="wide_resnet50_2",
            input_size=(image_size, image_size),
            layers=["layer1", "layer2", "layer3"],
            anomaly_map_mode=AnomalyMapGenerationMode.ADD,
            pre_trained=False,
        )
        description = load_backbone_weights(model.encoder, weights)
    elif name == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=["layer2", "layer3"], backbone="wide_resnet50_2", pre_trained=False)
        description = load_backbone_weights(model.feature_extractor, weights)
    else:
        raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")
    return ImageNetNormalized(model), description


def reverse_distillation_features(
    model: ImageNetNormalized, images: Tensor, cache: FeatureCache | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """The training output of anomalib's reverse distillation, ``(encoder features, decoder features)``, as
    ``model(images)`` returns it in train mode (no tiler), with the frozen encoder's features read from ``cache``
    when one is given. The encoder runs in eval mode without gradients (anomalib's ``TimmFeatureExtractor`` with
    ``requires_grad=False``), so its features of an image are the same every epoch and a cached run trains exactly
    as an uncached one."""
    rd = model.model
    if cache is None or rd.tiler is not None:
        return model(images)
    rd.encoder.eval()
    encoder = cache(model.normalize(images), lambda x: list(rd.encoder(x).values()))
    return encoder, rd.decoder(rd.bottleneck(encoder))


def fit_reverse_distillation(
    model: ImageNetNormalized,
    batches: Iterable[Tensor],
    epochs: int,
    device: torch.device,
    learning_rate: float = 0.005,
    log_every: int = 1,
    cache_encoder: bool = False,
) -> list[float]:
    """Train the bottleneck and decoder for ``epochs`` passes over ``batches`` (re-iterable); returns the mean loss
    of each epoch. The encoder stays frozen in eval mode (anomalib's ``forward`` calls ``encoder.eval()``);
    ``cache_encoder`` keeps its features of each image after the first epoch (float32 on the CPU: the same losses,
    later epochs without the encoder; see :func:`reverse_distillation_features`)."""
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

    rd = model.model
    params = list(rd.decoder.parameters()) + list(rd.bottleneck.parameters())
    optimizer = torch.optim.Adam(params, lr=learning_rate, betas=(0.5, 0.99))
    loss_fn = ReverseDistillationLoss()
    cache = FeatureCache() if cache_encoder else None
    model.to(device).train()
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for images in batches:
            optimizer.zero_grad()
            loss = loss_fn(*reverse_distillation_features(model, images.to(device), cache))
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + 1
        if count == 0:
            raise ValueError("reverse distillation: no training images")
        history.append(total / count)
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            logger.info("anomalib reverse distillation: epoch %d/%d, loss %.4f", epoch + 1, epochs, history[-1])
    model.eval()
    return history


@torch.no_grad()
def fit_patchcore(
    model: ImageNetNormalized, batches: Iterable[Tensor], device: torch.device, coreset_sampling_ratio: float = 0.1
) -> int:
    """Store the patch embeddings of every normal image, then keep a k-center-greedy coreset; returns its size."""
    patchcore = model.model
    patchcore.embedding_store = []
    model.to(device).train()
    for images in batches:
        model(images.to(device))
    if not patchcore.embedding_store:
        raise ValueError("PatchCore: no training images")
    patchcore.subsample_embedding(coreset_sampling_ratio)
    patchcore.embedding_store = []
    model.eval()
    size = int(patchcore.memory_bank.shape[0])
    logger.info("anomalib PatchCore: memory bank of %d patch embeddings (ratio %.2f)", size, coreset_sampling_ratio)
    return size
