"""Feature-distance anomaly maps shared by the distillation methods (RD, D²4FAD, PDD).

The maps follow the reverse-distillation recipe (Deng & Li, "Anomaly Detection via Reverse Distillation from
One-Class Embedding", CVPR 2022, Eq. 3-4 and official ``test.py::cal_anomaly_map``), which D²4FAD re-uses
(official ``ttttqz/D24FAD`` ``test.py::cal_anomaly_map`` + ``scipy.ndimage.gaussian_filter(sigma=4)``):

1. per scale, ``M_k = 1 - cos(f_a(h, w), f_b(h, w))`` over the channel axis;
2. bilinear upsampling of every ``M_k`` to the input size;
3. combination over scales (sum in RD/D²4FAD evaluation, product available as in RD's ``amap_mode='mul'``);
4. Gaussian smoothing with sigma 4, applied per image;
5. image score = max of the smoothed map.

Everything here is TorchScript-scriptable so that it can live inside exported ``network_def`` modules.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AnomalyMapGenerator",
    "GaussianBlur2d",
    "cosine_distance_map",
    "gaussian_kernel1d",
    "multiscale_anomaly_map",
]

_COMBINE_MODES = ("sum", "mean", "product")


def cosine_distance_map(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-pixel ``1 - cos`` over the channel axis (RD, Eq. 3).

    Args:
        a: features ``(B, C, h, w)``.
        b: features broadcastable to ``a``.
        eps: numerical floor of the norms, as in :func:`torch.nn.functional.cosine_similarity`.

    Returns:
        ``(B, 1, h, w)`` float32 map in ``[0, 2]``.
    """
    # in float32 even when the features come from a mixed-precision forward: near cos = 1, bfloat16's 8-bit mantissa
    # leaves steps of 0.004, as coarse as the whole range of a normal image's map (a no-op for float32 features)
    return (1.0 - F.cosine_similarity(a.float(), b.float(), dim=1, eps=eps)).unsqueeze(1)


def multiscale_anomaly_map(
    feats_a: list[Tensor],
    feats_b: list[Tensor],
    out_size: list[int],
    mode: str = "sum",
    align_corners: bool = False,
) -> Tensor:
    """Combine per-scale cosine-distance maps at ``out_size`` (RD, Eq. 4).

    Args:
        feats_a: per-scale features ``(B, C_k, h_k, w_k)``.
        feats_b: matching features (same length and shapes as ``feats_a``).
        out_size: ``[H, W]`` of the output map (usually the input image size).
        mode: ``"sum"`` (RD/D²4FAD evaluation, ``amap_mode='a'``), ``"mean"`` (sum / number of scales) or
            ``"product"`` (RD ``amap_mode='mul'``).
        align_corners: passed to bilinear :func:`torch.nn.functional.interpolate`. The official RD and D²4FAD
            code use ``align_corners=True``; the neutral default here is ``False`` (anomalib) and callers that
            reproduce a paper pass the official value.

    Returns:
        ``(B, 1, H, W)`` anomaly map.
    """
    if mode != "sum" and mode != "mean" and mode != "product":
        raise ValueError(f"multiscale_anomaly_map: mode must be 'sum', 'mean' or 'product', got '{mode}'")
    if len(feats_a) != len(feats_b) or len(feats_a) == 0:
        raise ValueError(
            f"multiscale_anomaly_map: expected two non-empty feature lists of equal length, got {len(feats_a)} and "
            f"{len(feats_b)}"
        )
    amap = F.interpolate(
        cosine_distance_map(feats_a[0], feats_b[0]), size=out_size, mode="bilinear", align_corners=align_corners
    )
    for i in range(1, len(feats_a)):
        m = F.interpolate(
            cosine_distance_map(feats_a[i], feats_b[i]), size=out_size, mode="bilinear", align_corners=align_corners
        )
        amap = amap * m if mode == "product" else amap + m
    if mode == "mean":
        amap = amap / float(len(feats_a))
    return amap


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """Normalised 1-D Gaussian, identical to ``scipy.ndimage.gaussian_filter1d``'s kernel.

    The radius is ``int(truncate * sigma + 0.5)`` so the kernel has ``2 * radius + 1`` taps (33 for sigma 4).
    Computed in float64 and returned as float64.
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return k / k.sum()


def _symmetric_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices of ``[-radius, n + radius)`` folded back with scipy's ``mode='reflect'``.

    scipy's 'reflect' is half-sample symmetric (``d c b a | a b c d | d c b a``, numpy's 'symmetric'), which is
    *not* torch's ``'reflect'`` padding (that one is scipy's 'mirror'). Folding indices with period ``2n`` handles
    radii larger than the image as scipy does.
    """
    idx = torch.arange(-radius, n + radius, device=device)
    idx = torch.remainder(idx, 2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


class GaussianBlur2d(nn.Module):
    """Separable Gaussian smoothing of ``(B, C, H, W)`` maps, each image and channel independently.

    Reproduces ``scipy.ndimage.gaussian_filter(m, sigma, truncate=4.0, mode='reflect')`` applied to every 2-D map
    ``m`` on its own (RD ``test.py`` applies it per image with batch size 1). The official D²4FAD ``test.py`` calls
    ``gaussian_filter`` on the whole ``(B, H, W)`` stack, which also blurs across the batch axis; that mixing is a
    batch-size artefact and is deliberately not reproduced.

    Args:
        sigma: standard deviation in pixels (RD/D²4FAD: 4). ``sigma <= 0`` disables smoothing.
        truncate: kernel half-width in sigmas (scipy default 4).
    """

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.radius: int = int(truncate * self.sigma + 0.5) if self.sigma > 0 else 0
        kernel = gaussian_kernel1d(self.sigma, truncate) if self.radius > 0 else torch.ones(1, dtype=torch.float64)
        # Non-persistent: the kernel is a function of the constructor arguments, not learned state, so it is kept
        # out of checkpoints (still carried by TorchScript export as a module attribute).
        self.register_buffer("kernel", kernel.to(torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"GaussianBlur2d expects a (B, C, H, W) tensor, got {x.dim()} dimensions")
        if self.radius == 0:
            return x
        # TorchScript skips this block (is_scripting() is resolved when compiling); eager mixed precision would run
        # the convolutions in bfloat16/float16 and quantise the map, so they run in float32 there
        if not torch.jit.is_scripting():  # noqa: SIM102 (must stay a separate `if` for TorchScript)
            if torch.is_autocast_enabled(x.device.type):
                with torch.autocast(device_type=x.device.type, enabled=False):
                    return self._blur(x.float())
        return self._blur(x)

    def _blur(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        k = self.kernel.to(dtype=x.dtype)
        # Fold channels into the batch axis: one single-channel convolution per 2-D map, so nothing is ever
        # mixed across images or channels.
        y = x.reshape(b * c, 1, h, w)
        y = torch.index_select(y, 2, _symmetric_index(h, self.radius, x.device))
        y = F.conv2d(y, k.view(1, 1, -1, 1))
        y = torch.index_select(y, 3, _symmetric_index(w, self.radius, x.device))
        y = F.conv2d(y, k.view(1, 1, 1, -1))
        return y.reshape(b, c, h, w)


class AnomalyMapGenerator(nn.Module):
    """Multi-scale cosine map + upsampling + per-image Gaussian smoothing, as one scriptable module.

    Args:
        mode: scale combination, see :func:`multiscale_anomaly_map`.
        sigma: Gaussian sigma in pixels (0 disables smoothing).
        align_corners: bilinear upsampling flag, see :func:`multiscale_anomaly_map`.
    """

    def __init__(self, mode: str = "sum", sigma: float = 4.0, align_corners: bool = False) -> None:
        super().__init__()
        if mode not in _COMBINE_MODES:
            raise ValueError(f"AnomalyMapGenerator: mode must be one of {_COMBINE_MODES}, got {mode!r}")
        self.mode = mode
        self.align_corners = align_corners
        self.blur = GaussianBlur2d(sigma)

    def forward(self, feats_a: list[Tensor], feats_b: list[Tensor], out_size: list[int]) -> Tensor:
        amap = multiscale_anomaly_map(feats_a, feats_b, out_size, self.mode, self.align_corners)
        return self.blur(amap)
