"""VMamba-Tiny (VSSM) backbone in pure PyTorch, state-dict compatible with the official release.

Reference: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024 (section "VMamba"), and the official code
``MzeroMiko/VMamba``, ``classification/models/vmamba.py``. This file reimplements only the configuration of the
released ``vssm1_tiny_0230s`` checkpoint (``classification/configs/vssm/vmambav2v_tiny_224.yaml``,
builder ``vmamba_tiny_s1l8``):

    dims 96-192-384-768, depths 2-2-8-2, ssm_d_state 1, ssm_ratio 1.0, ssm_dt_rank "auto", ssm_conv 3,
    ssm_conv_bias False, forward_type "v05_noz", mlp_ratio 4.0, downsample "v3", patchembed "v2", norm "ln2d"

``norm_layer="ln2d"`` makes the whole network channel-first: activations stay ``(B, C, H, W)``, LayerNorms act on
the channel dim, and linear layers run as 1x1 convolutions whose weights keep the ``nn.Linear`` layout, so the
parameter names and shapes equal those of the official ``model`` state dict. The classification head
(``classifier.*``) is not built: this module is a feature extractor returning per-stage maps, like the official
detection/segmentation wrapper ``Backbone_VSSM`` (including its optional ``outnorm{i}`` layers).

The selective scan runs through :func:`medad_monai.networks.selective_scan.selective_scan` (vectorised PyTorch,
or ``mamba_ssm``'s CUDA kernel when installed), so no custom CUDA extension is needed.
"""

import logging
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medad_monai.networks.selective_scan import DEFAULT_CHUNK_SIZE, selective_scan

__all__ = [
    "VMAMBA_TINY_CHECKPOINT_NAME",
    "VMAMBA_TINY_CHECKPOINT_URL",
    "LayerNorm2d",
    "Linear2d",
    "SS2D",
    "VSSBlock",
    "VSSLayer",
    "VSSM",
    "load_vmamba_checkpoint",
    "vmamba_tiny",
]

logger = logging.getLogger(__name__)

# file name and release URL of the ImageNet-1k VMamba-T[s1l8] weights, as listed in the official README
VMAMBA_TINY_CHECKPOINT_NAME = "vssm1_tiny_0230s_ckpt_epoch_264.pth"
VMAMBA_TINY_CHECKPOINT_URL = (
    "https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"
)


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
    per-route projections to (dt, B, C) via grouped 1x1 convs (``v05``: conv1d instead of einsum), S6 scan,
    cross-merge, channel LayerNorm ``out_norm``, ``out_proj`` (1x1). ``_oact`` is not set, so no output GELU.

    Parameters (names as in the checkpoint): ``in_proj.weight`` (d_inner, d_model), ``conv2d.weight``
    (d_inner, 1, k, k), ``x_proj_weight`` (4, dt_rank + 2*d_state, d_inner), ``dt_projs_weight``
    (4, d_inner, dt_rank), ``dt_projs_bias`` (4, d_inner), ``A_logs`` (4*d_inner, d_state), ``Ds`` (4*d_inner,),
    ``out_norm.{weight,bias}`` (d_inner,), ``out_proj.weight`` (d_model, d_inner).
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
    ) -> None:
        super().__init__()
        self.k_group = 4  # the 4 cross-scan routes
        if d_conv < 2:
            raise ValueError("the v05_noz SS2D always has its depth-wise conv (d_conv >= 2)")
        self.d_model = int(d_model)
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = int(math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank)
        self.chunk_size = int(chunk_size)
        k, d_inner, r, n = self.k_group, self.d_inner, self.dt_rank, self.d_state

        self.in_proj = Linear2d(self.d_model, d_inner, bias=False)
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
        self.out_norm = LayerNorm2d(d_inner)
        self.out_proj = Linear2d(d_inner, self.d_model, bias=False)
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

    def forward(self, x: Tensor) -> Tensor:
        """``(B, d_model, H, W) -> (B, d_model, H, W)``; order of operations of ``SS2Dv2.forwardv2``."""
        x = self.act(self.conv2d(self.in_proj(x)))
        y = self.forward_core(x)
        return self.out_proj(y)

    def forward_core(self, x: Tensor) -> Tensor:
        """Official ``forward_corev2`` for ``v05`` (cross2d scan, ``no_einsum=True``), ``(B, D, H, W)`` in and out."""
        b, d, h, w = x.shape
        length = h * w
        k, r, n = self.k_group, self.dt_rank, self.d_state
        xs = cross_scan_2d(x).reshape(b, k * d, length)
        # grouped 1x1 convs == one (R + 2N) x D projection per route, as the official no_einsum path computes it
        x_dbl = F.conv1d(xs, self.x_proj_weight.reshape(-1, d, 1), groups=k).reshape(b, k, r + 2 * n, length)
        dts = x_dbl[:, :, :r].reshape(b, k * r, length)
        Bs = x_dbl[:, :, r : r + n].contiguous()  # (B, K, N, L)
        Cs = x_dbl[:, :, r + n :].contiguous()
        dts = F.conv1d(dts, self.dt_projs_weight.reshape(k * d, r, 1), groups=k)  # (B, K*D, L)
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
        )
        y = cross_merge_2d(ys.reshape(b, k, d, length), h, w)
        return self.out_norm(y).to(x.dtype)


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


class VSSLayer(nn.Module):
    """One VMamba stage: ``blocks`` (VSS blocks) followed by ``downsample`` (official ``VSSM._make_layer``, which
    builds the same two children in an ``nn.Sequential``; the last stage's ``downsample`` is ``nn.Identity``)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


class VSSM(nn.Module):
    """VMamba backbone returning multi-scale features (paper: "Network Architecture"; official ``VSSM``
    without its ``classifier``, run like the official ``Backbone_VSSM.forward``).

    Defaults are VMamba-T ``vssm1_tiny_0230s``. ``forward`` returns, for each index in ``out_indices``, the output of
    that stage's blocks (before its downsampling) as ``(B, dims[i], H / 2**(i+2), W / 2**(i+2))``, e.g. at 256 px:
    96@64, 192@32, 384@16, 768@8. With ``with_out_norm=True``, each returned stage passes through its own
    channel LayerNorm ``outnorm{i}`` (as in ``Backbone_VSSM``); ImageNet classification checkpoints do not contain
    these, so they then start from the default LayerNorm affine parameters (weight 1, bias 0).
    Stages after the last requested one are not computed (their parameters still exist for checkpoint loading).

    Args:
        in_chans: input channels.
        dims: channels of the 4 stages.
        depths: VSS blocks per stage.
        patch_size: stem downsampling factor (two stride-``patch_size // 2`` convs).
        ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_conv, ssm_conv_bias, mlp_ratio: VSS block hyper-parameters.
        drop_path_rate: maximum stochastic-depth rate (linearly increasing per block). The official classifier was
            trained with 0.2; the default 0.0 keeps a frozen feature extractor deterministic even in train mode.
        out_indices: stages to return, in increasing order.
        with_out_norm: add the ``outnorm{i}`` LayerNorms of the official detection/segmentation backbone.
        chunk_size: chunk length of the vectorised selective scan.
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
        self.dims: list[int] = dims
        self.out_indices: list[int] = indices
        self.out_channels: list[int] = [dims[i] for i in indices]
        self.with_out_norm = bool(with_out_norm)
        self._last_index: int = indices[-1]

        self.patch_embed = PatchEmbedV2(in_chans, dims[0], patch_size)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            blocks = [
                VSSBlock(
                    dims[i],
                    drop_path=dpr[sum(depths[:i]) + j],
                    ssm_d_state=ssm_d_state,
                    ssm_ratio=ssm_ratio,
                    ssm_dt_rank=ssm_dt_rank,
                    ssm_conv=ssm_conv,
                    ssm_conv_bias=ssm_conv_bias,
                    mlp_ratio=mlp_ratio,
                    chunk_size=chunk_size,
                )
                for j in range(depths[i])
            ]
            downsample = DownsampleV3(dims[i], dims[i + 1]) if i < num_layers - 1 else None
            self.layers.append(VSSLayer(blocks, downsample))

        # official key names outnorm{i}; fixed attributes (Identity where unused) keep forward scriptable
        self.outnorm0 = self._make_out_norm(0)
        self.outnorm1 = self._make_out_norm(1)
        self.outnorm2 = self._make_out_norm(2)
        self.outnorm3 = self._make_out_norm(3)

        self.apply(self._init_weights)

    def _make_out_norm(self, i: int) -> nn.Module:
        return LayerNorm2d(self.dims[i]) if self.with_out_norm and i in self.out_indices else nn.Identity()

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

    def forward(self, x: Tensor) -> list[Tensor]:
        """``(B, in_chans, H, W)`` -> list of stage features ``(B, dims[i], H/2**(i+2), W/2**(i+2))``."""
        x = self.patch_embed(x)
        outs: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            if i <= self._last_index:
                x = layer.blocks(x)
                if i in self.out_indices:
                    outs.append(self._out_norm(i, x).contiguous())
                if i < self._last_index:
                    x = layer.downsample(x)
        return outs


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


def _raise_not_found(path: str) -> None:
    raise FileNotFoundError(
        f"VMamba checkpoint not found at {path}; download {VMAMBA_TINY_CHECKPOINT_NAME} from the VMamba release "
        f"page ({VMAMBA_TINY_CHECKPOINT_URL}) and pass its path"
    )


def load_vmamba_checkpoint(
    model: VSSM, path: str | os.PathLike[str], key: str = "model"
) -> tuple[list[str], list[str]]:
    """Load official VMamba weights (e.g. ``vssm1_tiny_0230s_ckpt_epoch_264.pth``) into a :class:`VSSM`.

    Official files keep the weights under ``"model"`` (``"model_ema"`` holds the EMA copy in full training
    checkpoints; pass ``key="model_ema"`` to use it); a bare state dict is accepted too. ``classifier.*`` entries
    are dropped because the backbone has no head.

    Returns:
        ``(missing_keys, unexpected_keys)``; missing keys can only be the ``outnorm{i}`` layers.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError: on unexpected keys, on missing keys other than ``outnorm*``, or on shape mismatches.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        _raise_not_found(path)
    ckpt = _torch_load(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
        state_dict = ckpt[key]
    elif isinstance(ckpt, dict) and all(isinstance(v, Tensor) for v in ckpt.values()):
        state_dict = ckpt  # bare state dict
    else:
        found = sorted(ckpt.keys()) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RuntimeError(f"{path} holds no VMamba state dict under key {key!r} (found: {found})")
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
        kwargs: further :class:`VSSM` arguments (e.g. ``chunk_size``, ``drop_path_rate``).
    """
    load = weights is not None and not (isinstance(weights, str) and weights == "random")
    if load and not os.path.isfile(os.fspath(weights)):
        _raise_not_found(os.fspath(weights))  # fail before spending seconds building the network
    model = VSSM(
        dims=(96, 192, 384, 768),
        depths=(2, 2, 8, 2),
        ssm_d_state=1,
        ssm_ratio=1.0,
        ssm_dt_rank="auto",
        ssm_conv=3,
        ssm_conv_bias=False,
        mlp_ratio=4.0,
        out_indices=out_indices,
        with_out_norm=with_out_norm,
        **kwargs,
    )
    if load:
        load_vmamba_checkpoint(model, weights)
    return model
