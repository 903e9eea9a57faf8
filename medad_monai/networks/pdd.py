"""PDD: Manifold-Prior Diverse Distillation for medical anomaly detection (Lu et al., CVPR 2026).

Follows the official code (``OxygenLu/PDD``: ``models/mamba_decoder.py``, ``scripts/train_two_twins_ddp.py`` with
``layerloss=4``, ``utils/losses.py``, ``utils/evaluation.py``); the paper's names are given with each part.

* **Teachers** (frozen, eval mode), on ImageNet-normalised input: WideResNet50-2 ``layer1..4`` (``f_r``: 256@s/4,
  512@s/8, 1024@s/16, 2048@s/32) and VMamba-Tiny, each stage's output *after* its downsampling (``f_m``: 192@s/8,
  384@s/16, 768@s/32, 768@s/32; official ``VSSM.forward(feature_list=True)``).
* **Manifold matching** (MMU, :class:`ChannelAdapter`, official ``EfficientChannelAdapter``): one adapter per level
  maps the VMamba feature to the ResNet width (``1x1 -> BN -> GELU -> dilated 3x3 -> BN -> GELU -> 1x1 -> BN``,
  plus a 1x1 residual projection, then GELU).
* **Unification**: the deepest level gives the unified manifold ``f_u = A_4(f_m[3]) + f_r[3]`` (2048@s/32), the
  students' input. **InA** (inter-level feature adaption): levels 1-3 give the distillation targets
  ``t_k = up_2(A_k(f_m[k])) + f_r[k]`` (the VMamba feature is one stride coarser, hence the 2x bilinear upsampling).
  The adapters are trained with the students (the targets are not detached in the official code).
  ``fusion="normalized"`` (ours, the demo default) L2-normalises both terms per pixel before the sum, so each
  teacher weighs the same whatever its feature scale (see :func:`fuse`).
* **MPA** (:class:`ManifoldPriorAffine`, official ``LightweightMLP``): ``1x1 -> BN -> GELU`` on ``f_u``, then two
  1x1 branches resized to the decoder's stage-2 and stage-3 inputs (1024@s/16, 512@s/8): the skip priors.
* **Students**: one reverse-distillation decoder (:class:`~medad_monai.networks.rd_decoder.ReverseDistillationDecoder`,
  2 blocks per stage, width 128) run twice on ``f_u``: with the MPA priors added to its stage inputs (Student 1,
  "prior") and without (Student 2, "plain"). The official code shares the decoder's weights between them
  (``shared_decoder``).
* **Losses** (official ``layerloss == 4``): :class:`~medad_monai.losses.pdd.PDDLoss` over what
  :meth:`PDD.training_outputs` returns: ``0.02 MSE(s_prior, t) + 0.05 C(s_prior, t)``, ``0.02 MSE(t, s_plain)`` and
  ``0.5 L_div(s_prior, s_plain)``; ``L_div``: ``max(0, cos - 0.75)`` on the shallowest level, ``max(0, 0.30 - cos)``
  on the two deeper ones.
* **Inference** (:meth:`PDD.forward`): per level ``1 - cos`` over channels between each student and the target,
  bilinearly upsampled (``align_corners=True``) to the input size, summed over levels and students, Gaussian
  sigma 4 per image; image score = max (postprocessing). ``plain_map="consistent"`` (ours, the demo default) leaves
  Student 2's diverse levels out of the sum.

Everything inference needs (both teachers, the trainable modules, the calibrated ``threshold``) is a parameter or
buffer, so ``model.pt`` and the exported TorchScript carry it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import Tensor, nn

from medad_monai.anomaly_maps import GaussianBlur2d, multiscale_anomaly_map
from medad_monai.networks.architecture import check_architecture, record_architecture
from medad_monai.networks.body_extent import fill_missing_body_extent, register_body_extent
from medad_monai.networks.calibration import fill_missing_calibration_scores, register_calibration_scores
from medad_monai.networks.feature_cache import FeatureCache
from medad_monai.networks.rd_decoder import ReverseDistillationDecoder
from medad_monai.networks.teachers import IMAGENET_MEAN, IMAGENET_STD, WideResNetTeacher
from medad_monai.networks.vmamba import (
    VSSM,
    vanilla_vmamba_tiny,
    vmamba_tiny,
)
from medad_monai.networks.volume_threshold import fill_missing_volume_calibration, register_volume_calibration
from medad_monai.networks.weights import VANILLA_VMAMBA_TINY, VMAMBA_TINY, resolve_weights

__all__ = [
    "PDD",
    "FUSIONS",
    "PLAIN_MAPS",
    "VMAMBA_WEIGHTS_ENV",
    "ChannelAdapter",
    "ManifoldPriorAffine",
    "build_vmamba_teacher",
    "build_wrn_teacher",
    "fuse",
    "resolve_vmamba_weights",
]

logger = logging.getLogger("medad_monai")

VMAMBA_WEIGHTS_ENV = VANILLA_VMAMBA_TINY.env  # MEDAD_VMAMBA_WEIGHTS: a local copy of the VMamba checkpoint
RESNET_CHANNELS: tuple[int, int, int, int] = (256, 512, 1024, 2048)
# VMamba-Tiny stage outputs after downsampling (official feature_list): dims[1], dims[2], dims[3], dims[3]
MAMBA_CHANNELS: tuple[int, int, int, int] = (192, 384, 768, 768)
FUSIONS = ("sum", "normalized")
PLAIN_MAPS = ("all", "consistent")
_NUM_LEVELS = 3


def resolve_vmamba_weights(
    weights: str | os.PathLike[str] | None, kind: str = "vanilla_tiny"
) -> tuple[str | None, str]:
    """The checkpoint of VMamba teacher ``kind`` for a ``weights`` spec (the one rule of
    :func:`~medad_monai.networks.weights.resolve_weights`; ``$MEDAD_VMAMBA_WEIGHTS`` names a local copy)."""
    if kind not in VMAMBA_TEACHERS:
        raise ValueError(f"PDD: vmamba must be one of {VMAMBA_TEACHERS}, got {kind!r}")
    return resolve_weights(weights, _VMAMBA_FILES[kind])


VMAMBA_TEACHERS = ("vanilla_tiny", "vssm1_tiny")
_VMAMBA_BUILDERS = {"vanilla_tiny": vanilla_vmamba_tiny, "vssm1_tiny": vmamba_tiny}
_VMAMBA_FILES = {"vanilla_tiny": VANILLA_VMAMBA_TINY, "vssm1_tiny": VMAMBA_TINY}


def build_vmamba_teacher(
    weights: str | os.PathLike[str] | None = "auto", kind: str = "vanilla_tiny", chunk_size: int | None = None
) -> VSSM:
    """Frozen VMamba-Tiny returning the official PDD features: every stage's output *after* its downsampling
    (``VSSM.forward(feature_list=True)``), at input ``s`` ``[192@s/8, 384@s/16, 768@s/32, 768@s/32]``.

    ``kind``: ``"vanilla_tiny"`` (official PDD: the original VMamba-T, ``vssmtiny_dp01_ckpt_epoch_292.pth``) or
    ``"vssm1_tiny"`` (VMamba-T v2 ``vssm1_tiny_0230s``, lighter: d_state 1).
    """
    if kind not in VMAMBA_TEACHERS:
        raise ValueError(f"PDD: vmamba must be one of {VMAMBA_TEACHERS}, got {kind!r}")
    path, description = resolve_vmamba_weights(weights, kind)
    kwargs = {} if chunk_size is None else {"chunk_size": int(chunk_size)}
    model = _VMAMBA_BUILDERS[kind](weights=path, out_mode="after_downsample", **kwargs)
    model.requires_grad_(False)
    model.eval()
    model.weights_description = f"{kind}: {description}"  # type: ignore[assignment]
    logger.info("PDD VMamba teacher (%s) weights: %s", kind, description)
    return model


def build_wrn_teacher(weights: str | None = "auto") -> WideResNetTeacher:
    """Frozen WideResNet50-2 teacher, ``layer1..4`` (inputs already ImageNet-normalised by :class:`PDD`)."""
    return WideResNetTeacher(weights, normalize=False, num_layers=4)


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
def _resize_to(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resampling of ``x`` to ``ref``'s spatial size (``align_corners=True``, as the official
    ``nn.UpsamplingBilinear2d``); identity when the sizes are equal."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=[int(ref.shape[-2]), int(ref.shape[-1])], mode="bilinear", align_corners=True)


def fuse(adapted: Tensor, resnet: Tensor, fusion: str = "sum") -> Tensor:
    """One InA target or the unified manifold: the adapted VMamba feature plus the WideResNet feature.

    ``"sum"``: the official ``A(f_m) + f_r``. ``"normalized"`` (ours): ``A(f_m)/|A(f_m)| + f_r/|f_r|`` per pixel.
    With the plain sum the larger term decides the target's direction, and so the cosine maps: measured on the
    development data with random teachers, the BN-normalised adapter output is 3x the WideResNet ``layer1``
    feature (per-pixel norm about 19 against 6), so the shallowest targets are mostly the coarse, trainable
    VMamba term. Normalising keeps both teachers' directions in every target.
    """
    adapted = _resize_to(adapted, resnet)
    if fusion == "normalized":
        return F.normalize(adapted, dim=1) + F.normalize(resnet, dim=1)
    return adapted + resnet


class ChannelAdapter(nn.Module):
    """Manifold matching of one level (MMU; official ``EfficientChannelAdapter``).

    ``GELU(BN(conv1x1(GELU(BN(conv3x3_dil2(GELU(BN(conv1x1(x)))))))) + P(x))`` with a bottleneck of
    ``max(in, out) // reduction`` channels, a dilation-2 3x3 conv, and ``P`` a 1x1 projection when the widths differ.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = max(in_channels // reduction, out_channels // reduction)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, mid, kernel_size=3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.residual(x))


class ManifoldPriorAffine(nn.Module):
    """MPA skip priors (official ``LightweightMLP``): a shared ``1x1 -> BN -> GELU`` on the unified manifold, then
    one 1x1 branch per receiving decoder stage, bilinearly resized (``align_corners=False``) to that stage's input.

    Args:
        in_channels: channels of the unified manifold (2048).
        out_channels: channels of each prior, in decoder-stage order (1024 for stage 2, 512 for stage 3).
        reduction: width reduction of the shared layer.
    """

    def __init__(self, in_channels: int = 2048, out_channels: Sequence[int] = (1024, 512), reduction: int = 2):
        super().__init__()
        mid = in_channels // reduction
        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.GELU()
        )
        self.branches = nn.ModuleList([nn.Conv2d(mid, c, kernel_size=1, bias=False) for c in out_channels])

    def forward(self, unified: Tensor, sizes: list[list[int]]) -> list[Tensor]:
        """Priors for the decoder stages whose input sizes are ``sizes`` (one ``[h, w]`` per branch)."""
        shared = self.shared(unified)
        out: list[Tensor] = []
        for i, branch in enumerate(self.branches):
            out.append(F.interpolate(branch(shared), size=sizes[i], mode="bilinear", align_corners=False))
        return out


def _init_like_official(module: nn.Module) -> None:
    """Official ``PDDDecoder`` initialisation: Kaiming-normal (fan_out, ReLU) for ``nn.Conv2d``, BN = identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------------------- model
class PDD(nn.Module):
    """Manifold-Prior Diverse Distillation (Lu et al., CVPR 2026): ``forward(image) -> (B, 1, H, W)`` anomaly map.

    Args:
        image_size: input side the bundle resizes to (paper: 256; a multiple of 32). Stored for export and
            benchmarks; the network itself is fully convolutional.
        wrn_weights, vmamba_weights: each teacher's weights, by the one rule of :mod:`medad_monai.networks.weights`:
            ``"auto"`` (a local copy, the torch hub cache or the official download, else random with a loud
            warning), ``"pretrained"``/``"imagenet"``, ``"random"`` or a path (the bundles set both from
            ``teacher_weights``).
        vmamba: the VMamba teacher, ``"vanilla_tiny"`` (official) or ``"vssm1_tiny"`` (:func:`build_vmamba_teacher`).
        decoder_blocks: RD decoder blocks per stage, deepest first (official PDD: ``(2, 2, 2)``).
        decoder_width: RD decoder ``width_per_group`` (128 = wide).
        adapter_reduction: bottleneck reduction of the channel adapters (official: 4).
        shared_decoder: both students run one decoder (official); ``False`` gives each student its own.
        fusion: how the adapted VMamba and the WideResNet features are combined into the targets and the unified
            manifold (:func:`fuse`): ``"sum"`` (official) or ``"normalized"`` (ours).
        detach_targets: stop the distillation gradients at the targets: the InA adapters then get none and keep
            their initialisation (BN in eval mode), so the students chase fixed targets (ours; the official code
            trains the adapters with the students).
        diverse_levels: how many of the shallowest levels the loss pushes apart
            (:class:`~medad_monai.losses.pdd.PDDLoss`, official ``low_dim_layers=1``); ``plain_map="consistent"``
            leaves them out of the map.
        plain_map: which levels of Student 2 ("plain") enter the anomaly map: ``"all"`` (official) or
            ``"consistent"`` (ours): only the levels under the consistency hinge, not the ``diverse_levels``, where
            the diversity loss pushes Student 2 away from Student 1 and so from the target on normal tissue.
        sigma: Gaussian smoothing of the anomaly map in pixels (official 4; 0 disables).
        align_corners: bilinear upsampling flag of the anomaly map (official ``True``).
        vmamba_chunk_size: chunk length of VMamba's vectorised selective scan (``None``: the default).
    """

    __jit_ignored_attributes__ = ["teacher_cache"]  # a training-time Python object, not part of the model

    def __init__(
        self,
        image_size: int = 256,
        wrn_weights: str | None = "auto",
        vmamba_weights: str | None = "auto",
        vmamba: str = "vanilla_tiny",
        decoder_blocks: Sequence[int] = (2, 2, 2),
        decoder_width: int = 128,
        adapter_reduction: int = 4,
        shared_decoder: bool = True,
        fusion: str = "sum",
        detach_targets: bool = False,
        diverse_levels: int = 1,
        plain_map: str = "all",
        sigma: float = 4.0,
        align_corners: bool = True,
        vmamba_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if image_size % 32 != 0 or image_size <= 0:
            raise ValueError(
                f"PDD: image_size must be a positive multiple of 32 (the teachers' stride), got {image_size}"
            )
        if len(decoder_blocks) != _NUM_LEVELS:
            raise ValueError(f"PDD: decoder_blocks must have {_NUM_LEVELS} entries, got {list(decoder_blocks)}")
        if plain_map not in PLAIN_MAPS:
            raise ValueError(f"PDD: plain_map must be one of {PLAIN_MAPS}, got {plain_map!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"PDD: fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0 <= diverse_levels <= _NUM_LEVELS:
            raise ValueError(f"PDD: diverse_levels must be in [0, {_NUM_LEVELS}], got {diverse_levels}")
        self.image_size = int(image_size)
        self.wrn = build_wrn_teacher(wrn_weights)
        self.teacher_cache: FeatureCache | None = None  # set for a training run (handlers.teacher_cache)
        self.vmamba = build_vmamba_teacher(vmamba_weights, vmamba, vmamba_chunk_size)
        self.teacher_weights: dict[str, str] = {
            "wrn50_2": str(self.wrn.weights_description),
            "vmamba_tiny": str(self.vmamba.weights_description),
        }
        logger.info("PDD teachers: WRN50-2 %s; VMamba-Tiny %s", *self.teacher_weights.values())
        # official up_dim_v_r1..r3 (InA targets of levels 1-3) and up_dim_v_r4 (the unified manifold)
        self.target_adapters = nn.ModuleList(
            [ChannelAdapter(MAMBA_CHANNELS[k], RESNET_CHANNELS[k], adapter_reduction) for k in range(_NUM_LEVELS)]
        )
        self.unify_adapter = ChannelAdapter(MAMBA_CHANNELS[3], RESNET_CHANNELS[3], adapter_reduction)
        self.mpa = ManifoldPriorAffine(RESNET_CHANNELS[3], (RESNET_CHANNELS[2], RESNET_CHANNELS[1]))
        self.student = ReverseDistillationDecoder(RESNET_CHANNELS[3], decoder_blocks, decoder_width)
        self.student_plain = (
            self.student
            if shared_decoder
            else ReverseDistillationDecoder(RESNET_CHANNELS[3], decoder_blocks, decoder_width)
        )
        for module in (self.target_adapters, self.unify_adapter, self.mpa):
            _init_like_official(module)
        self.shared_decoder, self.detach_targets = bool(shared_decoder), bool(detach_targets)
        self.fusion = fusion
        if self.detach_targets:
            self.target_adapters.requires_grad_(False)
        self.diverse_levels = int(diverse_levels)
        self.plain_map = plain_map
        self.plain_map_start = self.diverse_levels if plain_map == "consistent" else 0
        self.align_corners = bool(align_corners)
        self.score_reduction = "max"  # the image score is the map's maximum (official evaluation; medad_monai.scores)
        self.blur = GaussianBlur2d(sigma)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        register_body_extent(self)  # the body fraction of the slices it is served on, set with the threshold
        register_calibration_scores(self)  # the validation-normal scores the threshold came from
        register_volume_calibration(self)  # the threshold for 3D volumes, from normal volumes (NaN: none)
        record_architecture(
            self,
            {
                "image_size": self.image_size,
                "vmamba": vmamba,
                "decoder_blocks": list(decoder_blocks),
                "decoder_width": int(decoder_width),
                "adapter_reduction": int(adapter_reduction),
                "shared_decoder": self.shared_decoder,
                "fusion": fusion,
                "plain_map": plain_map,
                "diverse_levels": int(diverse_levels),
                "sigma": float(sigma),
            },
        )

    # ------------------------------------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> PDD:
        """Train the trainable parts; both teachers (and fixed targets) stay in eval mode."""
        super().train(mode)
        self.wrn.train(False)
        self.vmamba.train(False)
        if self.detach_targets:
            self.target_adapters.train(False)
        return self

    @torch.jit.ignore
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (adapters, MPA, the student decoder(s); not the teachers)."""
        return [p for p in self.parameters() if p.requires_grad]

    def teacher_features(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Frozen teacher features ``(f_r[0..3], f_m[0..3])`` of a ``(B, 3, H, W)`` image in ``[0, 1]``."""
        if not torch.jit.is_scripting():
            image = _plain_tensor(image)
        with torch.no_grad():
            x = (image - self.mean) / self.std
            f_r = self.wrn(x)
            f_m = self.vmamba(x)
        return f_r, f_m

    def features(self, image: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``(targets, Student 1 "prior" features, Student 2 "plain" features)``, 3 levels each, shallow first."""
        f_r, f_m = self.teacher_features(image)
        return self.student_features(f_r, f_m)

    @torch.jit.ignore
    def cached_teacher_features(self, image: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """:meth:`teacher_features` through ``teacher_cache`` when one is set (training only,
        :class:`~medad_monai.networks.feature_cache.FeatureCache`)."""
        if self.teacher_cache is None:
            return self.teacher_features(image)

        def compute(x: Tensor) -> list[Tensor]:
            f_r, f_m = self.teacher_features(x)
            return [*f_r, *f_m]

        levels = self.teacher_cache(image, compute)
        return levels[: len(levels) // 2], levels[len(levels) // 2 :]

    def student_features(self, f_r: list[Tensor], f_m: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Fused targets (InA) and the two students' features from the teachers' features (Sec. 3.2-3.4)."""
        targets: list[Tensor] = []
        for k, adapter in enumerate(self.target_adapters):
            t = fuse(adapter(f_m[k]), f_r[k], self.fusion)
            targets.append(t.detach() if self.detach_targets else t)
        unified = fuse(self.unify_adapter(f_m[3]), f_r[3], self.fusion)
        sizes = [[int(f_r[2].shape[-2]), int(f_r[2].shape[-1])], [int(f_r[1].shape[-2]), int(f_r[1].shape[-1])]]
        p1, p2 = self.mpa(unified, sizes)
        s_prior = self.student(unified, [None, p1, p2])
        s_plain = self.student_plain(unified, None)
        return targets, s_prior, s_plain

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors):
        # checkpoints from before these options used the official sum and map
        check_architecture(self, state_dict, prefix, legacy={"fusion": "sum", "plain_map": "all", "diverse_levels": 1})
        fill_missing_body_extent(state_dict, prefix)
        fill_missing_calibration_scores(state_dict, prefix)
        fill_missing_volume_calibration(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors)

    # ---------------------------------------------------------------------------------------------------- API
    def forward(self, image: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 1, H, W)`` anomaly map (larger = more anomalous)."""
        targets, s_prior, s_plain = self.features(image)
        size = [int(image.shape[-2]), int(image.shape[-1])]
        amap = multiscale_anomaly_map(s_prior, targets, size, "sum", self.align_corners)
        start = self.plain_map_start
        if start < len(s_plain):
            amap = amap + multiscale_anomaly_map(s_plain[start:], targets[start:], size, "sum", self.align_corners)
        amap = self.blur(amap)
        if not torch.jit.is_scripting():
            amap = _like_input(amap, image)
        return amap

    @torch.jit.ignore
    def training_outputs(self, image: Tensor) -> dict[str, list[Tensor]]:
        """What :class:`~medad_monai.losses.pdd.PDDLoss` reads: ``{"targets", "prior", "plain"}`` (3 levels each)."""
        targets, s_prior, s_plain = self.student_features(*self.cached_teacher_features(image))
        return {"targets": targets, "prior": s_prior, "plain": s_plain}
