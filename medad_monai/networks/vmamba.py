"""VMamba-Tiny (VSSM) backbones in pure PyTorch, state-dict compatible with the official releases.

Reference: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024 (section "VMamba"), and the official code
``MzeroMiko/VMamba``, ``classification/models/vmamba.py``. This file reimplements two released configurations:

* ``vmamba_tiny``: the ``vssm1_tiny_0230s`` checkpoint (``classification/configs/vssm/vmambav2v_tiny_224.yaml``,
  builder ``vmamba_tiny_s1l8``)::

    dims 96-192-384-768, depths 2-2-8-2, ssm_d_state 1, ssm_ratio 1.0, ssm_dt_rank "auto", ssm_conv 3,
    ssm_conv_bias False, forward_type "v05_noz", mlp_ratio 4.0, downsample "v3", patchembed "v2", norm "ln2d"

  ``norm_layer="ln2d"`` makes this network channel-first: activations stay ``(B, C, H, W)``, LayerNorms act on the
  channel dim, and linear layers run as 1x1 convolutions whose weights keep the ``nn.Linear`` layout.

* ``vanilla_vmamba_tiny``: the original VMamba-T (``vssmtiny_dp01_ckpt_epoch_292.pth``,
  ``classification/configs/vssm/vmambav0_tiny_224.yaml``, timm-registered builder ``vanilla_vmamba_tiny`` of the
  official single-file ``vmamba.py``), the VMamba teacher of PDD (Lu et al., CVPR 2026, official code
  ``OxygenLu/PDD``)::

    dims 96-192-384-768, depths 2-2-9-2, ssm_d_state 16, ssm_ratio 2.0, ssm_dt_rank "auto", ssm_conv 3,
    ssm_conv_bias True, forward_type "v0", mlp_ratio 0.0, downsample "v1", patchembed "v1", norm "ln"

  ``norm_layer="ln"`` keeps activations channel-last ``(B, H, W, C)`` between blocks, as the official code does,
  so plain ``nn.LayerNorm`` / ``nn.Linear`` layers carry the checkpoint's parameters; features are returned
  channel-first.

Parameter names and shapes equal those of the official ``model`` state dicts (the legacy key names of the v0
checkpoint are renamed on load, as the official ``VSSM._load_from_state_dict`` does). The classification head
(``classifier.*``) is not built: this module is a feature extractor returning per-stage maps, like the official
detection/segmentation wrapper ``Backbone_VSSM`` (including its optional ``outnorm{i}`` layers), or, for PDD, the
outputs of whole stages (blocks then downsampling) like the official ``VSSM.forward(x, feature_list=True)`` of
``OxygenLu/PDD``.

The selective scan runs through :func:`medad_monai.networks.selective_scan.selective_scan` (vectorised PyTorch,
or ``mamba_ssm``'s CUDA kernel when installed), so no custom CUDA extension is needed.
"""

import logging
import math
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medad_monai.networks.selective_scan import DEFAULT_CHUNK_SIZE, selective_scan

__all__ = [
    "VANILLA_VMAMBA_TINY_CHECKPOINT_NAME",
    "VANILLA_VMAMBA_TINY_CHECKPOINT_URL",
    "VMAMBA_TINY_CHECKPOINT_NAME",
    "VMAMBA_TINY_CHECKPOINT_URL",
    "LayerNorm2d",
    "Linear2d",
    "SS2D",
    "SS2DV0",
    "VSSBlock",
    "VSSBlockV0",
    "VSSLayer",
    "VSSM",
    "load_vmamba_checkpoint",
    "rename_legacy_vmamba_keys",
    "set_compiled_scan",
    "vanilla_vmamba_tiny",
    "vmamba_tiny",
]

logger = logging.getLogger(__name__)

# file name and release URL of the ImageNet-1k VMamba-T[s1l8] weights, as listed in the official README
VMAMBA_TINY_CHECKPOINT_NAME = "vssm1_tiny_0230s_ckpt_epoch_264.pth"
VMAMBA_TINY_CHECKPOINT_URL = (
    "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"
)
# file name and release URL of the original ImageNet-1k VMamba-T (v0) weights, as in the official builder
# ``vanilla_vmamba_tiny`` (also the VMamba teacher of PDD)
VANILLA_VMAMBA_TINY_CHECKPOINT_NAME = "vssmtiny_dp01_ckpt_epoch_292.pth"
VANILLA_VMAMBA_TINY_CHECKPOINT_URL = (
    "https://github.com/MzeroMiko/VMamba/releases/download/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth"
)
# (file name, URL) of the checkpoint matching each supported ``forward_type``
_CHECKPOINTS = {
    "v05_noz": (VMAMBA_TINY_CHECKPOINT_NAME, VMAMBA_TINY_CHECKPOINT_URL),
    "v0": (VANILLA_VMAMBA_TINY_CHECKPOINT_NAME, VANILLA_VMAMBA_TINY_CHECKPOINT_URL),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of a ``(B, C, H, W)`` tensor: the official ``LayerNorm2d`` ("ln2d").

    Same parameters (``weight``, ``bias`` of shape ``(C,)``) and eps (1e-5) as ``nn.LayerNorm(C)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """Per-pixel linear layer on ``(B, C, H, W)`` run as a 1x1 convolution: the official ``Linear2d``.

    The weight keeps the ``nn.Linear`` layout ``(out, in)`` so checkpoints trained with either layout load; a
    ``(out, in, 1, 1)`` conv-shaped weight in a state dict is reshaped on load, as the official class does.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.unsqueeze(-1).unsqueeze(-1), self.bias)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        weight = state_dict.get(key)
        if isinstance(weight, Tensor) and weight.dim() == 4 and weight.numel() == self.weight.numel():
            state_dict[key] = weight.reshape(self.weight.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class DropPath(nn.Module):
    """Per-sample stochastic depth (Huang et al., 2016), as ``timm.DropPath`` used by the official ``VSSBlock``.

    Identity in eval mode or with ``drop_prob == 0``; kept parameter-free so it never affects state dicts.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def cross_scan_2d(x: Tensor) -> Tensor:
    """Cross-scan of SS2D (paper: "2D-Selective-Scan for Vision Data"; official ``cross_scan_fwd``, ``scans=0``).

    ``(B, D, H, W) -> (B, 4, D, H*W)``: row-major, column-major, and both reversed.
    """
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    xs = torch.stack([rows, cols], dim=1)
    return torch.cat([xs, xs.flip(-1)], dim=1)


def cross_merge_2d(ys: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`cross_scan_2d` that sums the 4 routes (official ``cross_merge_fwd``, ``scans=0``).

    ``(B, 4, D, H*W) -> (B, D, H, W)``.
    """
    b, _, d, _ = ys.shape
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)  # undo the reversal of routes 2 and 3
    y_cols = y[:, 1].reshape(b, d, width, height).transpose(2, 3)  # column-major route back to row-major
    return y[:, 0].reshape(b, d, height, width) + y_cols


class SS2D(nn.Module):
    """2D selective-scan mixer, official ``SS2D`` with ``forward_type="v05_noz"`` and ``channel_first=True``.

    Mirrors ``SS2Dv2.__initv2__`` / ``forwardv2`` / ``forward_corev2`` (paper: SS2D and "Accelerating VMamba"):
    ``in_proj`` (1x1, no gate branch because of ``_noz``), depth-wise 3x3 conv, SiLU, cross-scan into 4 routes,
    per-route projections to (dt, B, C) (``v05``: conv1d instead of einsum; batched matmuls here), S6 scan,
    cross-merge, channel LayerNorm ``out_norm``, ``out_proj`` (1x1). ``_oact`` is not set, so no output GELU.

    Parameters (names as in the checkpoint), built in the official order of random draws: ``in_proj.weight``
    (d_inner, d_model; 2*d_inner with the gate branch of :class:`SS2DV0`), ``conv2d.weight`` (d_inner, 1, k, k)
    (and ``conv2d.bias`` with ``conv_bias``), ``x_proj_weight`` (4, dt_rank + 2*d_state, d_inner),
    ``dt_projs_weight`` (4, d_inner, dt_rank), ``dt_projs_bias`` (4, d_inner), ``A_logs`` (4*d_inner, d_state),
    ``Ds`` (4*d_inner,), ``out_norm.{weight,bias}`` (d_inner,), ``out_proj.weight`` (d_model, d_inner).

    ``gated`` and ``channel_first`` serve :class:`SS2DV0`, which shares these layers and the scan core
    (:meth:`scan_merge`): ``channel_first=False`` builds plain ``nn.Linear`` / ``nn.LayerNorm`` instead of the 1x1
    ``Linear2d`` / ``LayerNorm2d`` (same parameter shapes).
    """

    def __init__(
        self,
        d_model: int = 96,
        d_state: int = 1,
        ssm_ratio: float = 1.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        gated: bool = False,
        channel_first: bool = True,
    ) -> None:
        super().__init__()
        if d_conv < 2:
            raise ValueError("SS2D always has its depth-wise conv (d_conv >= 2)")
        self.k_group = 4  # the 4 cross-scan routes
        self.d_model = int(d_model)
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = int(math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank)
        self.chunk_size = int(chunk_size)
        # the CPU scans compiled with numba (selective_scan's use_compiled); set_compiled_scan switches them off
        self.use_compiled_scan = True
        k, d_inner, r, n = self.k_group, self.d_inner, self.dt_rank, self.d_state
        linear = Linear2d if channel_first else nn.Linear
        norm = LayerNorm2d if channel_first else nn.LayerNorm

        self.in_proj = linear(self.d_model, 2 * d_inner if gated else d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias
        )
        # per-route projections, stacked as in the official code (``x_proj`` Linear layers stacked then deleted)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, n))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = norm(d_inner)
        self.out_proj = linear(d_inner, self.d_model, bias=False)
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Official ``mamba_init`` (``initialize="v0"``): S4D-real A, D = 1, softplus^-1-spaced dt bias."""
        k, d_inner, r, n = self.k_group, self.d_inner, self.dt_rank, self.d_state
        # nn.Linear's default init for the stacked x_proj layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        dt_std = r**-0.5  # dt_scale = 1, dt_init = "random"
        self.dt_projs_weight.uniform_(-dt_std, dt_std)
        # dt log-uniform in [dt_min, dt_max]; store its softplus inverse so softplus(bias) starts in that range
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * d_inner, 1))
        self.Ds.fill_(1.0)

    def scan_merge(self, x: Tensor) -> Tensor:
        """Cross-scan, per-route projections, S6 scan and cross-merge: ``(B, D, H, W) -> (B, D, H, W)`` (float32).

        Official ``forward_corev2`` (``v05``: cross2d scan, ``no_einsum=True``) and ``forwardv0`` (einsum) up to their
        ``out_norm``; the per-route projections run as batched matmuls, the same (R + 2N) x D product per route as
        the official einsum. The dt bias and softplus are applied inside the scan (``delta_softplus=True``).
        """
        b, d, h, w = x.shape
        length = h * w
        k, r, n = self.k_group, self.dt_rank, self.d_state
        xs = cross_scan_2d(x).reshape(b, k * d, length)
        # per-route products as batched matmuls: (K, R+2N, D) @ (B, K, D, L); equal to grouped 1x1 convs, and faster
        # on CPU, where grouped conv1d takes a slow path
        x_dbl = torch.matmul(self.x_proj_weight, xs.reshape(b, k, d, length))  # (B, K, R+2N, L)
        Bs = x_dbl[:, :, r : r + n].contiguous()  # (B, K, N, L)
        Cs = x_dbl[:, :, r + n :].contiguous()
        dts = torch.matmul(self.dt_projs_weight, x_dbl[:, :, :r]).reshape(b, k * d, length)  # (B, K*D, L)
        As = -torch.exp(self.A_logs.float())
        ys = selective_scan(
            xs,
            dts,
            As,
            Bs,
            Cs,
            self.Ds.float(),
            self.dt_projs_bias.float().reshape(-1),
            True,
            self.chunk_size,
            use_compiled=self.use_compiled_scan,
        )
        return cross_merge_2d(ys.reshape(b, k, d, length), h, w)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, d_model, H, W) -> (B, d_model, H, W)``; order of operations of ``SS2Dv2.forwardv2``."""
        x = self.act(self.conv2d(self.in_proj(x)))
        y = self.forward_core(x)
        return self.out_proj(y)

    def forward_core(self, x: Tensor) -> Tensor:
        """Official ``forward_corev2`` for ``v05``: :meth:`scan_merge`, then ``out_norm``; ``(B, D, H, W)`` in/out."""
        return self.out_norm(self.scan_merge(x)).to(x.dtype)


class SS2DV0(SS2D):
    """2D selective-scan mixer of the original VMamba, official ``SS2D`` with ``forward_type="v0"`` (channel-last).

    Mirrors ``SS2Dv0.__initv0__`` / ``forwardv0`` of the official single-file ``vmamba.py``: ``in_proj`` to
    ``2 * d_inner`` (x and the gate z), ``z = SiLU(z)``; x goes channel-first through the depth-wise conv (with
    bias) and SiLU, then the cross-scan / S6 / cross-merge core :meth:`SS2D.scan_merge` (d_state 16 here),
    ``out_norm`` (LayerNorm over d_inner), ``y * z`` and ``out_proj``. ``__initv0__`` hard-codes ``conv_bias=True``,
    ``d_conv=3`` and bias-free projections; they are arguments here only for narrow test networks.

    Parameters: those of :class:`SS2D`, with ``in_proj.weight`` (2*d_inner, d_model) and ``conv2d.bias``.
    """

    def __init__(
        self, d_model: int = 96, d_state: int = 16, ssm_ratio: float = 2.0, conv_bias: bool = True, **kwargs: Any
    ) -> None:
        """``kwargs``: further :class:`SS2D` arguments (``dt_rank``, ``d_conv``, ``dt_min``, ``chunk_size``, ...)."""
        super().__init__(d_model, d_state, ssm_ratio, conv_bias=conv_bias, gated=True, channel_first=False, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, d_model) -> (B, H, W, d_model)``; order of operations of the official ``forwardv0``."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        z = self.act(z)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.out_norm(self.scan_merge(x).permute(0, 2, 3, 1))
        return self.out_proj(y.to(z.dtype) * z)


def set_compiled_scan(module: nn.Module, enabled: bool) -> None:
    """Let every :class:`SS2D` in ``module`` use the numba-compiled CPU scans (``True``, the default) or only the
    PyTorch ones (``False``: the block-wise scan and the closed-form recurrence), e.g. to time one against the other
    (``benchmarks/bench_pdd.py``). Outputs agree within the scans' tolerance (1e-4); CUDA and TorchScript never use
    the compiled loops."""
    for sub in module.modules():
        if isinstance(sub, SS2D):
            sub.use_compiled_scan = bool(enabled)


class Mlp(nn.Module):
    """Channel-first two-layer MLP of the VSS block (official ``Mlp`` with ``channels_first=True``): fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear2d(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """Visual State Space block (paper: "Network Architecture"; official ``VSSBlock`` with ``post_norm=False``).

    ``x = x + drop_path(op(norm(x)))`` then ``x = x + drop_path(mlp(norm2(x)))``, all channel-first.
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        ssm_d_state: int = 1,
        ssm_ratio: float = 1.0,
        ssm_dt_rank: int | str = "auto",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = False,
        mlp_ratio: float = 4.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.op = SS2D(
            d_model=dim,
            d_state=ssm_d_state,
            ssm_ratio=ssm_ratio,
            dt_rank=ssm_dt_rank,
            d_conv=ssm_conv,
            conv_bias=ssm_conv_bias,
            chunk_size=chunk_size,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSBlockV0(nn.Module):
    """VSS block of the original VMamba without MLP (official ``VSSBlock`` with ``mlp_ratio=0``, channel-last).

    ``x = x + drop_path(op(norm(x)))`` on ``(B, H, W, C)``, with ``norm`` a plain ``nn.LayerNorm`` and ``op`` a
    :class:`SS2DV0`.
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        ssm_d_state: int = 16,
        ssm_ratio: float = 2.0,
        ssm_dt_rank: int | str = "auto",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2DV0(
            d_model=dim,
            d_state=ssm_d_state,
            ssm_ratio=ssm_ratio,
            dt_rank=ssm_dt_rank,
            d_conv=ssm_conv,
            conv_bias=ssm_conv_bias,
            chunk_size=chunk_size,
        )
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.op(self.norm(x)))


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (official ``Permute``)."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims: list[int] = [int(d) for d in dims]

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(self.dims)


class PatchEmbedV1(nn.Sequential):
    """Non-overlapping stem, official ``VSSM._make_patch_embed`` ``version="v1"`` (Swin's): a stride-``patch_size``
    conv, then LayerNorm over channels; ``(B, in_chans, H, W) -> (B, H/4, W/4, C)`` channel-last.

    The official ``nn.Sequential`` is ``[conv, Identity, LayerNorm(in_channel_first=True, out_channel_first=False)]``;
    here the permute sits at index 1 and index 2 is a plain ``nn.LayerNorm``, so the keys ``patch_embed.{0,2}.*``
    are the same.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4) -> None:
        super().__init__(
            nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(embed_dim),
        )


class PatchEmbedV2(nn.Sequential):
    """Overlapping stem, official ``VSSM._make_patch_embed_v2`` (channel-first): two stride-2 3x3 convs.

    conv(3->C/2) -> LN2d -> GELU -> conv(C/2->C) -> LN2d, i.e. 4x downsampling. The official ``nn.Sequential``
    holds ``nn.Identity`` placeholders (permutes of the channel-last variant) at indices 1, 3 and 6; they are kept
    so that the checkpoint keys ``patch_embed.{0,2,5,7}.*`` map onto the same modules.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4) -> None:
        stride = patch_size // 2
        kernel_size = stride + 1
        super().__init__(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=kernel_size, stride=stride, padding=1),
            nn.Identity(),
            LayerNorm2d(embed_dim // 2),
            nn.Identity(),
            nn.GELU(),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=kernel_size, stride=stride, padding=1),
            nn.Identity(),
            LayerNorm2d(embed_dim),
        )


class DownsampleV3(nn.Sequential):
    """Stage transition, official ``VSSM._make_downsample_v3`` (channel-first): stride-2 3x3 conv then LN2d.

    ``nn.Identity`` at indices 0 and 2 keep the official keys ``downsample.1.*`` (conv) and ``downsample.3.*`` (norm).
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Identity(),
            nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1),
            nn.Identity(),
            LayerNorm2d(out_dim),
        )


class PatchMerge2D(nn.Module):
    """Swin patch merging without parameters (official ``PatchMerge``, channel-last): the 2x2 neighbourhood of each
    output pixel concatenated on channels in the order (0, 0), (1, 0), (0, 1), (1, 1) of (row, column) offsets.

    ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C)``. An odd height or width is zero-padded at the bottom/right, as
    ``PatchMerging2D`` of the official ``classification/models/vmamba.py`` does (the single-file version's padding
    fails on odd sizes; PDD's 256 px and 64 px inputs never have any).
    """

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[1], x.shape[2]
        if h % 2 != 0 or w % 2 != 0:
            x = F.pad(x, [0, 0, 0, w % 2, 0, h % 2])
        return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)


class DownsampleV1(nn.Sequential):
    """Stage transition, official ``VSSM._make_downsample`` ``version="v1"`` (channel-last): patch merging, then
    LayerNorm(4C) and a bias-free Linear(4C -> out_dim); keys ``downsample.1.*`` (norm) and ``downsample.2.weight``.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__(
            PatchMerge2D(),
            nn.LayerNorm(4 * dim),
            nn.Linear(4 * dim, out_dim, bias=False),
        )


class VSSLayer(nn.Module):
    """One VMamba stage: ``blocks`` (VSS blocks) followed by ``downsample`` (official ``VSSM._make_layer``, which
    builds the same two children in an ``nn.Sequential``; the last stage's ``downsample`` is ``nn.Identity``)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


_FORWARD_TYPES = ("v05_noz", "v0")
_OUT_MODES = ("before_downsample", "after_downsample")

# legacy key names of the first VMamba release (e.g. ``vssmtiny_dp01_ckpt_epoch_292.pth``) -> current names, as
# renamed by the official ``VSSM._load_from_state_dict``
_LEGACY_KEY_PATTERNS = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.0."),
    (re.compile(r"^patch_embed\.norm\."), "patch_embed.2."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^(layers\.\d+\.downsample)\.norm\."), r"\1.1."),
    (re.compile(r"^(layers\.\d+\.downsample)\.reduction\."), r"\1.2."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def rename_legacy_vmamba_keys(state_dict: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Rename, in place, the legacy keys of the first VMamba release to the current official names.

    ``patch_embed.proj -> patch_embed.0``, ``patch_embed.norm -> patch_embed.2``, ``blocks.*.ln_1 -> norm``,
    ``blocks.*.self_attention -> op``, ``downsample.norm -> downsample.1``, ``downsample.reduction ->
    downsample.2``, ``norm -> classifier.norm``, ``head -> classifier.head`` (the renaming of the official
    ``VSSM._load_from_state_dict``). Only keys under ``prefix`` are considered; others are left alone. Returns the
    same dict.
    """
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for pattern, replacement in _LEGACY_KEY_PATTERNS:
            new_rest = pattern.sub(replacement, rest, count=1)
            if new_rest != rest:
                state_dict[prefix + new_rest] = state_dict.pop(key)
                break
    return state_dict


class VSSM(nn.Module):
    """VMamba backbone returning multi-scale features (paper: "Network Architecture"; official ``VSSM``
    without its ``classifier``).

    Defaults are VMamba-T ``vssm1_tiny_0230s`` (``forward_type="v05_noz"``, channel-first); with
    ``forward_type="v0"`` the network is the original VMamba (channel-last, patch embed and downsampling v1, VSS
    blocks without MLP; see :func:`vanilla_vmamba_tiny`). ``forward`` returns channel-first features for each index
    in ``out_indices``:

    * ``out_mode="before_downsample"`` (like the official ``Backbone_VSSM.forward``): the output of that stage's
      blocks, before its downsampling, ``(B, dims[i], H / 2**(i+2), W / 2**(i+2))``, e.g. at 256 px: 96@64,
      192@32, 384@16, 768@8. With ``with_out_norm=True``, each returned stage passes through its own LayerNorm
      ``outnorm{i}``; ImageNet classification checkpoints do not contain these, so they then start from the
      default LayerNorm affine parameters (weight 1, bias 0).
    * ``out_mode="after_downsample"`` (like ``VSSM.forward(x, feature_list=True)`` of the official PDD code): the
      output of the whole stage, blocks then downsampling, ``(B, dims[i+1], H / 2**(i+3), W / 2**(i+3))`` for
      the first stages and, since the last stage has no downsampling, ``(B, dims[3], H / 32, W / 32)`` for the
      last one, e.g. at 256 px: 192@32, 384@16, 768@8, 768@8.

    Stages after the last requested one are not computed (their parameters still exist for checkpoint loading).
    Loading a state dict renames the legacy keys of the first VMamba release (:func:`rename_legacy_vmamba_keys`).

    Args:
        in_chans: input channels.
        dims: channels of the 4 stages.
        depths: VSS blocks per stage.
        patch_size: stem downsampling factor (``v05_noz``: two stride-``patch_size // 2`` convs; ``v0``: one conv).
        ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_conv, ssm_conv_bias, mlp_ratio: VSS block hyper-parameters
            (``v0`` blocks have no MLP: ``mlp_ratio`` must then be 0).
        drop_path_rate: maximum stochastic-depth rate (linearly increasing per block). The official classifiers
            were trained with 0.2; the default 0.0 keeps a frozen feature extractor deterministic even in train mode.
        out_indices: stages to return, in increasing order.
        with_out_norm: add the ``outnorm{i}`` LayerNorms of the official detection/segmentation backbone
            (``out_mode="before_downsample"`` only).
        chunk_size: chunk length of the closed-form chunked selective scan (used when ``ssm_d_state == 1``).
        forward_type: ``"v05_noz"`` or ``"v0"``, the official SS2D variants of the two configurations.
        out_mode: ``"before_downsample"`` or ``"after_downsample"`` (see above).
    """

    def __init__(
        self,
        in_chans: int = 3,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 8, 2),
        patch_size: int = 4,
        ssm_d_state: int = 1,
        ssm_ratio: float = 1.0,
        ssm_dt_rank: int | str = "auto",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = False,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        with_out_norm: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        forward_type: str = "v05_noz",
        out_mode: str = "before_downsample",
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        depths = [int(d) for d in depths]
        if len(dims) != len(depths):
            raise ValueError(f"dims {dims} and depths {depths} must have the same length")
        num_layers = len(depths)
        if num_layers != 4:  # the official outnorm{i} names are fixed attributes (see below)
            raise ValueError(f"VSSM has exactly 4 stages, got depths {depths}")
        indices = [int(i) for i in out_indices]
        if not indices or sorted(set(indices)) != indices or indices[0] < 0 or indices[-1] >= num_layers:
            raise ValueError(f"out_indices must be increasing stage indices in [0, {num_layers}), got {out_indices}")
        if forward_type not in _FORWARD_TYPES:
            raise ValueError(f"forward_type must be one of {_FORWARD_TYPES}, got {forward_type!r}")
        if out_mode not in _OUT_MODES:
            raise ValueError(f"out_mode must be one of {_OUT_MODES}, got {out_mode!r}")
        if forward_type == "v0" and mlp_ratio != 0:
            raise ValueError(f"the v0 VSS blocks have no MLP (mlp_ratio 0), got mlp_ratio {mlp_ratio}")
        if with_out_norm and out_mode != "before_downsample":
            raise ValueError("with_out_norm applies to the stage outputs before downsampling only")
        self.forward_type: str = forward_type
        self.out_mode: str = out_mode
        self.channel_last: bool = forward_type == "v0"  # official norm_layer "ln" (v0) vs "ln2d" (v05_noz)
        self._after_downsample: bool = out_mode == "after_downsample"
        self.dims: list[int] = dims
        self.out_indices: list[int] = indices
        stage_out = [dims[min(i + 1, num_layers - 1)] for i in range(num_layers)] if self._after_downsample else dims
        self.out_channels: list[int] = [stage_out[i] for i in indices]
        self.with_out_norm = bool(with_out_norm)
        self._last_index: int = indices[-1]

        if self.channel_last:
            self.patch_embed: nn.Module = PatchEmbedV1(in_chans, dims[0], patch_size)
        else:
            self.patch_embed = PatchEmbedV2(in_chans, dims[0], patch_size)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        ssm_kwargs: dict[str, Any] = dict(
            ssm_d_state=ssm_d_state,
            ssm_ratio=ssm_ratio,
            ssm_dt_rank=ssm_dt_rank,
            ssm_conv=ssm_conv,
            ssm_conv_bias=ssm_conv_bias,
            chunk_size=chunk_size,
        )
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            blocks: list[nn.Module] = []
            for j in range(depths[i]):
                drop_path = dpr[sum(depths[:i]) + j]
                if self.channel_last:
                    blocks.append(VSSBlockV0(dims[i], drop_path=drop_path, **ssm_kwargs))
                else:
                    blocks.append(VSSBlock(dims[i], drop_path=drop_path, mlp_ratio=mlp_ratio, **ssm_kwargs))
            downsample: nn.Module | None = None
            if i < num_layers - 1:
                downsample = (DownsampleV1 if self.channel_last else DownsampleV3)(dims[i], dims[i + 1])
            self.layers.append(VSSLayer(blocks, downsample))

        # official key names outnorm{i}; fixed attributes (Identity where unused) keep forward scriptable
        self.outnorm0 = self._make_out_norm(0)
        self.outnorm1 = self._make_out_norm(1)
        self.outnorm2 = self._make_out_norm(2)
        self.outnorm3 = self._make_out_norm(3)

        self.apply(self._init_weights)

    def _make_out_norm(self, i: int) -> nn.Module:
        if not (self.with_out_norm and i in self.out_indices):
            return nn.Identity()
        return nn.LayerNorm(self.dims[i]) if self.channel_last else LayerNorm2d(self.dims[i])

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Official ``VSSM._init_weights``: truncated-normal(0.02) linear weights (1x1 ``Linear2d`` included), zero
        biases, unit LayerNorms; convolutions and SSM parameters keep their own initialisation."""
        if isinstance(m, nn.Linear):
            # timm's trunc_normal_(std=0.02) truncates at +-2 (absolute), i.e. 100 sigma: never reached, so a
            # plain normal draw has the same distribution and is ~5x faster than the rejection-based version
            with torch.no_grad():
                m.weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _out_norm(self, i: int, x: Tensor) -> Tensor:
        if i == 0:
            return self.outnorm0(x)
        if i == 1:
            return self.outnorm1(x)
        if i == 2:
            return self.outnorm2(x)
        return self.outnorm3(x)

    def _feature(self, x: Tensor) -> Tensor:
        """A returned feature map, channel-first and contiguous."""
        if self.channel_last:
            x = x.permute(0, 3, 1, 2)
        return x.contiguous()

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, in_chans, H, W)`` -> list of ``(B, C, h, w)`` features, one per ``out_indices`` (see the class)."""
        x = self.patch_embed(x)
        outs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i <= self._last_index:
                x = layer.blocks(x)
                if self._after_downsample:
                    x = layer.downsample(x)
                    if i in self.out_indices:
                        outs.append(self._feature(x))
                else:
                    if i in self.out_indices:
                        outs.append(self._feature(self._out_norm(i, x)))
                    if i < self._last_index:
                        x = layer.downsample(x)
        return outs

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        rename_legacy_vmamba_keys(state_dict, prefix)  # as the official VSSM._load_from_state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _is_outnorm_key(key: str) -> bool:
    return key.startswith("outnorm")


class _CfgNodeStandIn:
    """Passive stand-in for the yacs ``CfgNode`` training config pickled in official full checkpoints.

    ``torch.load(weights_only=True)`` only fills plain dict types, so instantiation yields an ``OrderedDict``;
    no yacs code (nor any other code from the file) runs.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return OrderedDict()


def _torch_load(path: str) -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution).

    Official full training checkpoints (``save_checkpoint_ema`` in the official ``utils.py``) also pickle the yacs
    training config; its class is mapped to a passive dict stand-in so that neither ``yacs`` nor an unsafe unpickler
    is needed. Anything else that is not plain data is refused.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if safe_globals is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals([(_CfgNodeStandIn, "yacs.config.CfgNode")]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"Could not safely load the VMamba checkpoint {path}: it pickles objects other than tensors and plain "
            f"data ({err}). Re-save its weights with torch.save({{'model': ckpt['model']}}, new_path) in a trusted "
            "environment and pass the new file."
        ) from err


def _raise_not_found(path: str, forward_type: str = "v05_noz") -> None:
    name, url = _CHECKPOINTS[forward_type]
    raise FileNotFoundError(
        f"VMamba checkpoint not found at {path}; download {name} from the VMamba release page ({url}) and pass its path"
    )


def load_vmamba_checkpoint(
    model: VSSM, path: str | os.PathLike[str], key: str = "model"
) -> tuple[list[str], list[str]]:
    """Load official VMamba weights (``vssm1_tiny_0230s_ckpt_epoch_264.pth``, ``vssmtiny_dp01_ckpt_epoch_292.pth``)
    into a :class:`VSSM`.

    Official files keep the weights under ``"model"`` (``"model_ema"`` holds the EMA copy in full training
    checkpoints; pass ``key="model_ema"`` to use it); a bare state dict is accepted too. Legacy key names of the
    first VMamba release are renamed (:func:`rename_legacy_vmamba_keys`), then ``classifier.*`` entries are dropped
    because the backbone has no head. The file is read with ``torch.load(weights_only=True)``.

    Returns:
        ``(missing_keys, unexpected_keys)``; missing keys can only be the ``outnorm{i}`` layers.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError: on unexpected keys, on missing keys other than ``outnorm*``, or on shape mismatches.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        _raise_not_found(path, model.forward_type)
    ckpt = _torch_load(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        state_dict = ckpt[key]
    elif isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()):
        state_dict = ckpt  # bare state dict
    else:
        found = sorted(ckpt.keys()) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path} holds no VMamba state dict under key {key!r} (found: {found})")
    state_dict = rename_legacy_vmamba_keys(dict(state_dict))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(state_dict, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if unexpected:
        raise RuntimeError(f"Unexpected keys in VMamba checkpoint {path}: {unexpected}")
    not_outnorm = [k for k in missing if not _is_outnorm_key(k)]
    if not_outnorm:
        raise RuntimeError(f"VMamba checkpoint {path} lacks weights for: {not_outnorm}")
    if missing:
        logger.info(
            "VMamba checkpoint %s has no %s; they keep their default initialisation (weight 1, bias 0)", path, missing
        )
    logger.info("Loaded VMamba weights from %s (%d tensors)", path, len(state_dict))
    return missing, unexpected


def _is_weights_path(weights: str | os.PathLike[str] | None) -> bool:
    return weights is not None and not (isinstance(weights, str) and weights == "random")


def _build_vssm(weights: str | os.PathLike[str] | None, config: dict[str, Any], kwargs: dict[str, Any]) -> VSSM:
    """Build a :class:`VSSM` from a released configuration (``kwargs`` may override it) and load ``weights``."""
    config = {**config, **kwargs}
    load = _is_weights_path(weights)
    if load and not os.path.isfile(os.fspath(weights)):
        # fail before spending seconds building the network
        _raise_not_found(os.fspath(weights), config.get("forward_type", "v05_noz"))
    model = VSSM(**config)
    if load:
        load_vmamba_checkpoint(model, weights)
    return model


def vmamba_tiny(
    weights: str | os.PathLike[str] | None = None,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    with_out_norm: bool = False,
    **kwargs: Any,
) -> VSSM:
    """VMamba-T ``vssm1_tiny_0230s`` backbone (official builder ``vmamba_tiny_s1l8``, channel-first).

    Args:
        weights: ``None`` or ``"random"`` for random initialisation; otherwise the path of a local official
            checkpoint file, loaded with :func:`load_vmamba_checkpoint` (nothing is downloaded or faked).
        out_indices: stages to return.
        with_out_norm: add per-stage output LayerNorms (``outnorm{i}``, absent from classification checkpoints).
        kwargs: further :class:`VSSM` arguments (e.g. ``chunk_size``, ``drop_path_rate``, ``out_mode``).
    """
    config = dict(
        dims=(96, 192, 384, 768),
        depths=(2, 2, 8, 2),
        ssm_d_state=1,
        ssm_ratio=1.0,
        ssm_dt_rank="auto",
        ssm_conv=3,
        ssm_conv_bias=False,
        mlp_ratio=4.0,
        forward_type="v05_noz",
        out_indices=out_indices,
        with_out_norm=with_out_norm,
    )
    return _build_vssm(weights, config, kwargs)


def vanilla_vmamba_tiny(
    weights: str | os.PathLike[str] | None = None,
    out_mode: str = "after_downsample",
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **kwargs: Any,
) -> VSSM:
    """Original VMamba-T (v0), official timm builder ``vanilla_vmamba_tiny``: PDD's VMamba teacher.

    ``VSSM(depths=[2, 2, 9, 2], dims=96, patch_size=4, ssm_d_state=16, ssm_ratio=2.0, ssm_dt_rank="auto",
    ssm_conv=3, ssm_conv_bias=True, forward_type="v0", mlp_ratio=0.0, norm_layer="ln", downsample_version="v1",
    patchembed_version="v1")``, without the classifier. The official builder sets ``drop_path_rate=0.2`` for
    training; here it is 0 (pass ``drop_path_rate`` to change it) so that the frozen teacher is deterministic.
    For frozen-teacher use call ``.eval()`` and run it under ``torch.no_grad()``.

    With the default ``out_mode="after_downsample"``, ``forward(x)`` returns what the official PDD code gets from
    ``encoder_ssm(img, feature_list=True)``: each stage's output after its downsampling, channel-first; at 256 px
    ``[(B, 192, 32, 32), (B, 384, 16, 16), (B, 768, 8, 8), (B, 768, 8, 8)]`` (at 64 px: 8, 4, 2, 2).
    ``out_mode="before_downsample"`` returns the stage outputs before downsampling instead:
    ``[(B, 96, 64, 64), (B, 192, 32, 32), (B, 384, 16, 16), (B, 768, 8, 8)]`` at 256 px.

    Args:
        weights: ``None`` or ``"random"`` for random initialisation; otherwise the path of a local copy of
            :data:`VANILLA_VMAMBA_TINY_CHECKPOINT_NAME` (from :data:`VANILLA_VMAMBA_TINY_CHECKPOINT_URL`), loaded
            with :func:`load_vmamba_checkpoint` (legacy key names are renamed; nothing is downloaded).
        out_mode: ``"after_downsample"`` (official ``feature_list=True``) or ``"before_downsample"``.
        out_indices: stages to return.
        kwargs: further :class:`VSSM` arguments (e.g. ``drop_path_rate``, ``with_out_norm`` with
            ``out_mode="before_downsample"``).

    Raises:
        FileNotFoundError: if ``weights`` is a path that does not exist (the message names the file to download).
    """
    config = dict(
        dims=(96, 192, 384, 768),
        depths=(2, 2, 9, 2),
        patch_size=4,
        ssm_d_state=16,
        ssm_ratio=2.0,
        ssm_dt_rank="auto",
        ssm_conv=3,
        ssm_conv_bias=True,
        mlp_ratio=0.0,
        forward_type="v0",
        out_mode=out_mode,
        out_indices=out_indices,
    )
    return _build_vssm(weights, config, kwargs)
