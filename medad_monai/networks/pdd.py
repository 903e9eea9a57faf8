"""PDD: Manifold-Prior Diverse Distillation for medical anomaly detection (Lu et al., CVPR 2026).

The authors released no code; this follows the paper as summarised in DESIGN §4. Every choice the paper leaves
open is a constructor argument with a documented default (see ``bundles/pdd/docs/README.md``, section "What the
paper fixes and what we chose").

Pipeline (levels ``k = 1..3`` are indices ``0..2`` here, shallow first):

* **Teachers** (frozen, eval mode): WideResNet50-2 ``layer1..3`` (256/512/1024 channels, strides 4/8/16) and
  VMamba-Tiny ``vssm1_tiny_0230s`` stages 1-3 (96/192/384 channels, same strides), on ImageNet-normalised input.
* **InA** (:class:`InA`, one per level): ``f_b = U(P(f_mamba), S) + f_resnet``; ``U`` resamples bilinearly to the
  ResNet feature's size (the ratio ``S``; 1 for these two backbones), ``P`` is a trainable 1x1 conv + BN projection
  96/192/384 -> 256/512/1024 (our assumption: the paper adds features whose channels differ). ``f_b`` is the
  distillation target of both students.
* **MMU** (:class:`MMU`, levels ``mmu_levels``): ``C1 = conv1x1(f_mamba)``; ``f_mc = C1 + conv3x3(GELU(BN(C1)))``;
  unified manifold ``f_t = f_mc + f_resnet`` (``f_t = f_resnet`` on levels without an MMU).
* **Students** (:class:`PDDStudent`): a bottleneck (ours: a 3x3 stride-2 conv + BN + ReLU that maps the deepest
  unified level ``f_t[2]`` (1024 @ s/16) to 2048 @ s/32, as RD's OCBE output; ``bottleneck="all"`` first fuses all
  three levels) followed by the reverse-distillation decoder
  (:class:`~medad_monai.networks.rd_decoder.ReverseDistillationDecoder`), one bottleneck per student.
  Student 1 is the plain decoder, distilled to ``f_b`` with ``L_kr`` (squared error). Student 2 receives **MPA**
  skip priors (:class:`MPA`): a per-pixel affine map (1x1 conv with bias) of the unified manifold, added to the
  input of decoder stage ``i`` from the level with the same shape (stage 1 <- ``f_t[2]``, stage 2 <- ``f_t[1]``);
  it is distilled with ``L_prp = alpha * MSE + beta * (1 - cos)``.
* **Diversity** between the students (:func:`~medad_monai.losses.diversity.diversity_loss`): ``max(0, cos - tau_low)``
  on shallow levels, ``max(0, tau_high - cos)`` on deep levels.
* **Inference** (:meth:`PDD.forward`): per level ``1 - cos(f_b, student)`` for both students, bilinearly upsampled to
  the input size, summed over levels and students, Gaussian sigma 4 per image. Image score = max (postprocessing).

Everything inference needs (both teachers, the trainable modules, the calibrated ``threshold``) is a parameter or
buffer, so ``model.pt`` and the exported TorchScript carry it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import Tensor, nn

from medad_monai.anomaly_maps import GaussianBlur2d, multiscale_anomaly_map
from medad_monai.losses.diversity import diversity_loss
from medad_monai.losses.feature_regression import mse_cosine_loss, squared_error_loss
from medad_monai.networks.rd_decoder import ReverseDistillationDecoder
from medad_monai.networks.teachers import IMAGENET_MEAN, IMAGENET_STD, WideResNetTeacher, imagenet_weights_cache_path
from medad_monai.networks.vmamba import VMAMBA_TINY_CHECKPOINT_NAME, VSSM, vmamba_tiny

__all__ = [
    "MPA",
    "MMU",
    "PDD",
    "VMAMBA_WEIGHTS_ENV",
    "InA",
    "PDDStudent",
    "StudentBottleneck",
    "build_vmamba_teacher",
    "build_wrn_teacher",
    "resolve_vmamba_weights",
]

logger = logging.getLogger("medad_monai")

VMAMBA_WEIGHTS_ENV = "MEDAD_VMAMBA_WEIGHTS"
RESNET_CHANNELS: tuple[int, int, int] = (256, 512, 1024)
MAMBA_CHANNELS: tuple[int, int, int] = (96, 192, 384)
_NUM_LEVELS = 3


def _loud_warning(message: str) -> None:
    """Log and ``warnings.warn`` a message framed so that it stands out in a training log."""
    banner = "!" * 100
    logger.warning("\n%s\n%s\n%s", banner, message, banner)
    warnings.warn(message, UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------------- teachers
def resolve_vmamba_weights(weights: str | os.PathLike[str] | None) -> tuple[str | None, str]:
    """Resolve a VMamba-Tiny ``weights`` spec to a checkpoint path (or ``None`` for random initialisation).

    Args:
        weights: ``"auto"``: the path in ``$MEDAD_VMAMBA_WEIGHTS`` if set (it must exist), else
            ``<torch hub dir>/checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth`` if present, else random
            initialisation with a loud warning (nothing is downloaded). ``"random"``/``None``: random initialisation.
            Anything else: the path of an official checkpoint file.

    Returns:
        ``(path or None, human-readable description)``.
    """
    if weights is None or weights == "random":
        return None, "random initialisation"
    if weights == "auto":
        env = os.environ.get(VMAMBA_WEIGHTS_ENV)
        if env:
            path = os.path.expanduser(env)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"${VMAMBA_WEIGHTS_ENV} is set to '{env}', which is not a file")
            return path, f"local file {path} (${VMAMBA_WEIGHTS_ENV})"
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", VMAMBA_TINY_CHECKPOINT_NAME)
        if os.path.isfile(cached):
            return cached, f"ImageNet-1k ({cached})"
        _loud_warning(
            "PDD: no VMamba-Tiny checkpoint found (set $MEDAD_VMAMBA_WEIGHTS or the config's vmamba_weights to "
            f"{VMAMBA_TINY_CHECKPOINT_NAME}, or place it at {cached}). The VMamba teacher is RANDOMLY INITIALISED: "
            "results will be far below the paper's."
        )
        return None, "random initialisation (no checkpoint found)"
    path = os.path.expanduser(os.fspath(weights))
    return path, f"local file {path}"


def build_vmamba_teacher(weights: str | os.PathLike[str] | None = "auto", chunk_size: int | None = None) -> VSSM:
    """Frozen VMamba-Tiny (``vssm1_tiny_0230s``) returning stages 1-3 (96/192/384 channels, strides 4/8/16)."""
    path, description = resolve_vmamba_weights(weights)
    kwargs = {} if chunk_size is None else {"chunk_size": int(chunk_size)}
    model = vmamba_tiny(weights=path, out_indices=(0, 1, 2), **kwargs)
    model.requires_grad_(False)
    model.eval()
    logger.info("PDD VMamba-Tiny teacher weights: %s", description)
    model.weights_description = description  # type: ignore[assignment]
    return model


def build_wrn_teacher(weights: str | None = "auto") -> WideResNetTeacher:
    """Frozen WideResNet50-2 teacher (inputs already ImageNet-normalised by :class:`PDD`).

    ``"auto"`` is passed to :class:`WideResNetTeacher` when it supports it; otherwise it is resolved here the same
    way: ImageNet weights from the torch hub cache when present, else random initialisation with a loud warning.
    """
    if weights == "auto":
        try:
            return WideResNetTeacher("auto", normalize=False)
        except FileNotFoundError:  # teachers.py without "auto": it took the string for a file path
            if os.path.isfile(imagenet_weights_cache_path()):
                weights = "imagenet"
            else:
                _loud_warning(
                    f"PDD: ImageNet WideResNet50-2 weights not found at {imagenet_weights_cache_path()}. The WRN "
                    "teacher is RANDOMLY INITIALISED: results will be far below the paper's."
                )
                weights = "random"
    return WideResNetTeacher(weights, normalize=False)


@torch.jit.unused
def _plain_tensor(x: Tensor) -> Tensor:
    """Drop tensor subclasses (MONAI ``MetaTensor``): their per-operation metadata tracking multiplies the cost of a
    network with thousands of small operations (the VMamba teacher) several times over. Eager mode only."""
    return x.as_subclass(Tensor) if type(x) is not Tensor else x


@torch.jit.unused
def _like_input(out: Tensor, image: Tensor) -> Tensor:
    """Give the map the input's ``MetaTensor`` metadata (affine, applied transforms), as MONAI's per-operation
    propagation would have, so that postprocessing such as ``Invertd`` can map it back to the input geometry."""
    if isinstance(image, MetaTensor):
        out = MetaTensor(out)
        out.copy_meta_from(image)
    return out


# ------------------------------------------------------------------------------------------------ fusion modules
def _resize_to(x: Tensor, ref: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinear resampling of ``x`` to ``ref``'s spatial size (``U(., S)`` in the paper); identity when equal."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=[int(ref.shape[-2]), int(ref.shape[-1])], mode="bilinear", align_corners=align_corners)


class InA(nn.Module):
    """Teacher fusion of one level (paper: InA): ``f_b = U(P(f_mamba), S) + f_resnet``.

    ``P`` (1x1 conv without bias + BatchNorm) maps the Mamba channels to the ResNet channels: our assumption, since
    the paper adds the two features although their channels differ (96/192/384 vs 256/512/1024).
    """

    def __init__(self, mamba_channels: int, resnet_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(mamba_channels, resnet_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(resnet_channels)

    def forward(self, f_mamba: Tensor, f_resnet: Tensor) -> Tensor:
        return _resize_to(self.bn(self.proj(f_mamba)), f_resnet) + f_resnet


class MMU(nn.Module):
    """Unified manifold of one level (paper: MMU): ``C1 = conv1x1(f_mamba)``, ``f_mc = C1 + conv3x3(GELU(BN(C1)))``,
    ``f_t = f_mc + f_resnet``.

    Widths follow from the sums: ``C1`` and the 3x3 conv output ``resnet_channels`` (our reading; the paper gives
    no widths). ``C1`` is resampled to the ResNet feature's size when they differ.
    """

    def __init__(self, mamba_channels: int, resnet_channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(mamba_channels, resnet_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(resnet_channels)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(resnet_channels, resnet_channels, kernel_size=3, padding=1)

    def forward(self, f_mamba: Tensor, f_resnet: Tensor) -> Tensor:
        c1 = _resize_to(self.c1(f_mamba), f_resnet)
        f_mc = c1 + self.conv(self.act(self.bn(c1)))
        return f_mc + f_resnet


class ManifoldUnification(nn.Module):
    """MMUs on ``levels`` (indices 0..2); other levels pass ``f_resnet`` through as the unified manifold."""

    def __init__(self, levels: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.levels: list[int] = sorted({int(k) for k in levels})
        if any(k < 0 or k >= _NUM_LEVELS for k in self.levels):
            raise ValueError(f"mmu_levels must be in [0, {_NUM_LEVELS}), got {list(levels)}")
        self.mmus = nn.ModuleList([MMU(MAMBA_CHANNELS[k], RESNET_CHANNELS[k]) for k in self.levels])

    def forward(self, f_mamba: list[Tensor], f_resnet: list[Tensor]) -> list[Tensor]:
        out: list[Tensor] = [f for f in f_resnet]
        for j, mmu in enumerate(self.mmus):
            k = self.levels[j]
            out[k] = mmu(f_mamba[k], f_resnet[k])
        return out


class MPA(nn.Module):
    """MPA skip priors for Student 2: ``prior_i = A_i(f_t[level(i)])`` added to decoder stage ``i``'s input.

    ``A_i`` is a per-pixel affine map (1x1 conv with bias, our reading of "per-pixel affine"), initialised to zero
    by default so that Student 2 starts as a plain RD decoder (``zero_init=False``: PyTorch's default init).
    Stage ``i`` (0 = deepest) takes ``in_channels / 2**i`` channels at ``2**i`` times the bottleneck size, which is
    unified level ``2 - (i - 1)`` (stage 1 <- level 2 (1024 @ s/16), stage 2 <- level 1 (512 @ s/8)); stage 0
    (the bottleneck, s/32) has no unified level of its size.

    Args:
        stages: decoder stages that receive a prior (subset of ``{1, 2}``).
        num_stages: decoder stages (3).
        decoder_in_channels: channels of the decoder input (2048).
        zero_init: zero-initialise the affine maps.
    """

    def __init__(
        self,
        stages: Sequence[int] = (1, 2),
        num_stages: int = 3,
        decoder_in_channels: int = 2048,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.stages: list[int] = sorted({int(s) for s in stages})
        if any(s < 1 or s >= num_stages for s in self.stages):
            raise ValueError(f"mpa_stages must be in [1, {num_stages}), got {list(stages)}")
        self.num_stages = int(num_stages)
        self.levels: list[int] = [_NUM_LEVELS - s for s in self.stages]
        convs = []
        for s, k in zip(self.stages, self.levels):
            conv = nn.Conv2d(RESNET_CHANNELS[k], decoder_in_channels // 2**s, kernel_size=1)
            if zero_init:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
            convs.append(conv)
        self.affines = nn.ModuleList(convs)

    def forward(self, f_t: list[Tensor]) -> list[Tensor | None]:
        priors: list[Tensor | None] = []
        for _ in range(self.num_stages):
            priors.append(None)
        for j, affine in enumerate(self.affines):
            priors[self.stages[j]] = affine(f_t[self.levels[j]])
        return priors


class StudentBottleneck(nn.Module):
    """Student input from the unified manifold (our choice; the paper does not specify it).

    ``mode="deepest"``: ``ReLU(BN(conv3x3_stride2(f_t[2])))`` 1024 @ s/16 -> 2048 @ s/32, like RD's OCBE output.
    ``mode="all"``: ``f_t[0]`` and ``f_t[1]`` are average-pooled to s/16, concatenated with ``f_t[2]`` and mixed by a
    1x1 conv + BN + ReLU back to 1024 channels before the same strided conv.
    """

    def __init__(self, mode: str = "deepest", out_channels: int = 2048) -> None:
        super().__init__()
        if mode not in ("deepest", "all"):
            raise ValueError(f"bottleneck must be 'deepest' or 'all', got {mode!r}")
        self.mode = mode
        c = RESNET_CHANNELS[-1]
        if mode == "all":
            self.fuse: nn.Module = nn.Sequential(
                nn.Conv2d(sum(RESNET_CHANNELS), c, kernel_size=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
            )
        else:
            self.fuse = nn.Identity()
        self.down = nn.Sequential(
            nn.Conv2d(c, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, f_t: list[Tensor]) -> Tensor:
        x = f_t[-1]
        if self.mode == "all":
            size = [int(x.shape[-2]), int(x.shape[-1])]
            x = self.fuse(torch.cat([F.adaptive_avg_pool2d(f_t[0], size), F.adaptive_avg_pool2d(f_t[1], size), x], 1))
        return self.down(x)


class PDDStudent(nn.Module):
    """One student: :class:`StudentBottleneck` + RD decoder, returning ``[256 @ s/4, 512 @ s/8, 1024 @ s/16]``."""

    def __init__(self, bottleneck: str = "deepest", num_blocks: Sequence[int] = (3, 4, 6), width_per_group: int = 128):
        super().__init__()
        self.bottleneck = StudentBottleneck(bottleneck, 2048)
        self.decoder = ReverseDistillationDecoder(2048, num_blocks, width_per_group)
        if len(num_blocks) != _NUM_LEVELS:
            raise ValueError(f"decoder_blocks must have {_NUM_LEVELS} entries, got {list(num_blocks)}")

    def forward(self, f_t: list[Tensor], priors: list[Tensor | None] | None = None) -> list[Tensor]:
        return self.decoder(self.bottleneck(f_t), priors)


# ------------------------------------------------------------------------------------------------------- model
class PDD(nn.Module):
    """Manifold-Prior Diverse Distillation (Lu et al., CVPR 2026): ``forward(image) -> (B, 1, H, W)`` anomaly map.

    Args:
        image_size: input side the bundle resizes to (paper: 256; must be a multiple of 32). Stored for export and
            benchmarks; the network itself is fully convolutional.
        wrn_weights: WideResNet50-2 teacher weights: ``"auto"`` (ImageNet from the torch hub cache, else random with
            a loud warning), ``"imagenet"``, ``"random"`` or a ``.pth`` path.
        vmamba_weights: VMamba-Tiny weights: ``"auto"`` (``$MEDAD_VMAMBA_WEIGHTS``, the torch hub cache, else random
            with a loud warning), ``"random"`` or the path of the official ``vssm1_tiny_0230s`` checkpoint.
        mmu_levels: levels (0..2) with an MMU; elsewhere the unified manifold is the ResNet feature.
        bottleneck: student input, ``"deepest"`` or ``"all"`` (:class:`StudentBottleneck`).
        decoder_blocks: RD decoder blocks per stage, deepest first (RD: ``(3, 4, 6)``).
        decoder_width: RD decoder ``width_per_group`` (128 = wide).
        mpa_stages: decoder stages of Student 2 that receive MPA priors (subset of ``{1, 2}``).
        mpa_zero_init: zero-initialise the MPA affine maps.
        kr_weight, prp_weight, diversity_weight: weights of ``L_kr``, ``L_prp`` and the diversity loss in the total.
        prp_alpha, prp_beta: ``L_prp = alpha * MSE + beta * (1 - cos)``.
        tau_low, tau_high: diversity hinges (paper, HeadCT: 0.75 and 0.30).
        shallow_levels, deep_levels: levels with the shallow / deep diversity hinge.
        diversity_per_pixel: cosine per pixel (``True``) or of flattened maps (``False``) in the diversity loss.
        sigma: Gaussian smoothing of the anomaly map in pixels (0 disables).
        align_corners: bilinear upsampling flag of the anomaly map.
        vmamba_chunk_size: chunk length of VMamba's vectorised selective scan (``None``: the default).
    """

    def __init__(
        self,
        image_size: int = 128,
        wrn_weights: str | None = "auto",
        vmamba_weights: str | None = "auto",
        mmu_levels: Sequence[int] = (0, 1, 2),
        bottleneck: str = "deepest",
        decoder_blocks: Sequence[int] = (3, 4, 6),
        decoder_width: int = 128,
        mpa_stages: Sequence[int] = (1, 2),
        mpa_zero_init: bool = True,
        kr_weight: float = 1.0,
        prp_weight: float = 1.0,
        diversity_weight: float = 1.0,
        prp_alpha: float = 1.0,
        prp_beta: float = 1.0,
        tau_low: float = 0.75,
        tau_high: float = 0.30,
        shallow_levels: Sequence[int] = (0, 1),
        deep_levels: Sequence[int] = (2,),
        diversity_per_pixel: bool = True,
        sigma: float = 4.0,
        align_corners: bool = False,
        vmamba_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if image_size % 32 != 0 or image_size <= 0:
            raise ValueError(
                f"PDD: image_size must be a positive multiple of 32 (the students' stride), got {image_size}"
            )
        self.image_size = int(image_size)
        self.wrn = build_wrn_teacher(wrn_weights)
        self.vmamba = build_vmamba_teacher(vmamba_weights, vmamba_chunk_size)
        self.teacher_weights: dict[str, str] = {
            "wrn50_2": str(self.wrn.weights_description),
            "vmamba_tiny": str(self.vmamba.weights_description),
        }
        logger.info("PDD teachers: WRN50-2 %s; VMamba-Tiny %s", *self.teacher_weights.values())
        self.ina = nn.ModuleList([InA(MAMBA_CHANNELS[k], RESNET_CHANNELS[k]) for k in range(_NUM_LEVELS)])
        self.mmu = ManifoldUnification(mmu_levels)
        self.student1 = PDDStudent(bottleneck, decoder_blocks, decoder_width)
        self.student2 = PDDStudent(bottleneck, decoder_blocks, decoder_width)
        self.mpa = MPA(mpa_stages, len(decoder_blocks), 2048, mpa_zero_init)
        self.kr_weight, self.prp_weight, self.diversity_weight = (
            float(kr_weight),
            float(prp_weight),
            float(diversity_weight),
        )
        self.prp_alpha, self.prp_beta = float(prp_alpha), float(prp_beta)
        self.tau_low, self.tau_high = float(tau_low), float(tau_high)
        self.shallow_levels = [int(k) for k in shallow_levels]
        self.deep_levels = [int(k) for k in deep_levels]
        self.diversity_per_pixel = bool(diversity_per_pixel)
        self.align_corners = bool(align_corners)
        self.blur = GaussianBlur2d(sigma)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("threshold", torch.tensor(float("nan")))

    # ------------------------------------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> PDD:
        """Train the trainable parts; both teachers stay in eval mode (frozen running statistics)."""
        super().train(mode)
        self.wrn.train(False)
        self.vmamba.train(False)
        return self

    @torch.jit.ignore
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (InA, MMU, MPA, both students; not the teachers)."""
        return [p for p in self.parameters() if p.requires_grad]

    def teacher_features(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Frozen teacher features ``(f_resnet[0..2], f_mamba[0..2])`` of a ``(B, 3, H, W)`` image in ``[0, 1]``."""
        if not torch.jit.is_scripting():
            image = _plain_tensor(image)
        with torch.no_grad():
            x = (image - self.mean) / self.std
            f_r = self.wrn(x)[:3]  # layer1..3 (literal: TorchScript cannot read module globals)
            f_m = self.vmamba(x)
        return f_r, f_m

    def features(self, image: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``(f_b, Student 1 features, Student 2 features)``, each a list of 3 levels (shallow first)."""
        f_r, f_m = self.teacher_features(image)
        f_b: list[Tensor] = []
        for k, ina in enumerate(self.ina):
            f_b.append(ina(f_m[k], f_r[k]))
        f_t = self.mmu(f_m, f_r)
        s1 = self.student1(f_t, None)
        s2 = self.student2(f_t, self.mpa(f_t))
        return f_b, s1, s2

    # ---------------------------------------------------------------------------------------------------- API
    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 1, H, W)`` anomaly map (larger = more anomalous)."""
        f_b, s1, s2 = self.features(image)
        size = [int(image.shape[-2]), int(image.shape[-1])]
        amap = multiscale_anomaly_map(f_b, s1, size, "sum", self.align_corners)
        amap = self.blur(amap + multiscale_anomaly_map(f_b, s2, size, "sum", self.align_corners))
        if not torch.jit.is_scripting():
            amap = _like_input(amap, image)
        return amap

    @torch.jit.ignore
    def losses(self, f_b: list[Tensor], s1: list[Tensor], s2: list[Tensor]) -> dict[str, Tensor]:
        """The loss terms and their weighted total (``"loss"``)."""
        kr = squared_error_loss(s1, f_b)
        prp = mse_cosine_loss(s2, f_b, self.prp_alpha, self.prp_beta)
        div = diversity_loss(
            s1, s2, self.shallow_levels, self.deep_levels, self.tau_low, self.tau_high, self.diversity_per_pixel
        )
        loss = self.kr_weight * kr + self.prp_weight * prp + self.diversity_weight * div
        return {"loss": loss, "kr": kr.detach(), "prp": prp.detach(), "div": div.detach()}

    @torch.jit.ignore
    def training_step(self, image: Tensor) -> dict[str, Tensor]:
        """One training step's losses: ``{"loss", "kr", "prp", "div"}`` (``loss`` carries the gradient)."""
        return self.losses(*self.features(image))
