"""DDAD's autoencoder backbones: AE, AE-U and MemAE, and an ensemble of them (Cai et al., MedIA 2023, §3.2, §4.2).

The backbone (MedIA 2023 §4.2, official ``models/autoencoder.py``): for a 1x64x64 input in [-1, 1], an encoder of
four [conv 4x4 stride 2, BN, ReLU] blocks with 16-32-64-64 channels (64 -> 4 px), flatten, FC 2048, BN, ReLU,
FC to a 16-d latent; a mirrored decoder ending in a 4x4 transposed conv with no activation. About 4.49 M
parameters. AE-U outputs a second channel, the per-pixel log variance; MemAE (Gong et al., ICCV 2019) addresses a
memory of ``mem_dim`` items with the latent before decoding. Their losses are
:class:`~medad_monai.losses.autoencoder.EnsembleReconstructionLoss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medad_monai.networks.grouped_ensemble import grouped_outputs

__all__ = ["AE", "AEEnsemble", "MemAE", "MemoryUnit", "build_backbone"]

BACKBONES = ("ae", "ae-u", "memae")


def _down(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


class AE(nn.Module):
    """Convolutional autoencoder with a fully connected bottleneck (DDAD backbone "AE", or "AE-U").

    Args:
        in_channels: image channels (1 in DDAD).
        latent_size: bottleneck width (16 in DDAD).
        multiplier: width multiplier of the conv channels (1 in DDAD).
        image_size: square input size; must be a multiple of 16 (64 in DDAD).
        uncertainty: AE-U: also predict a per-pixel log variance (output channel ``in_channels``..).
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_size: int = 16,
        multiplier: float = 1.0,
        image_size: int = 64,
        uncertainty: bool = False,
    ) -> None:
        super().__init__()
        if image_size % 16 != 0:
            raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
        c1, c2, c3 = int(16 * multiplier), int(32 * multiplier), int(64 * multiplier)
        self.in_channels, self.uncertainty = in_channels, uncertainty
        self.fm, self.c3 = image_size // 16, c3
        self.encoder = nn.Sequential(*_down(in_channels, c1), *_down(c1, c2), *_down(c2, c3), *_down(c3, c3))
        self.linear_enc = nn.Sequential(
            nn.Linear(c3 * self.fm * self.fm, 2048), nn.BatchNorm1d(2048), nn.ReLU(True), nn.Linear(2048, latent_size)
        )
        self.linear_dec = nn.Sequential(
            nn.Linear(latent_size, 2048), nn.BatchNorm1d(2048), nn.ReLU(True), nn.Linear(2048, c3 * self.fm * self.fm)
        )
        out_channels = 2 * in_channels if uncertainty else in_channels
        self.decoder = nn.Sequential(
            *_up(c3, c3), *_up(c3, c2), *_up(c2, c1), nn.ConvTranspose2d(c1, out_channels, 4, 2, 1, bias=False)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` to latent ``(B, latent_size)``."""
        return self.linear_enc(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent to output ``(B, C or 2C, H, W)``."""
        h = self.linear_dec(z).view(z.shape[0], self.c3, self.fm, self.fm)
        return self.decoder(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, C, H, W)``; AE-U: mean and log variance stacked, ``(B, 2C, H, W)``."""
        return self.decode(self.encode(x))

    def training_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the loss reads: ``{"output": forward(x)}``."""
        return {"output": self(x)}


class MemoryUnit(nn.Module):
    """Memory addressing of MemAE (Gong et al., ICCV 2019, Eq. 4-7): softmax attention over ``mem_dim`` items,
    optional hard shrinkage (Eq. 7, re-normalised), output = attention-weighted memory items."""

    def __init__(self, mem_dim: int, fea_dim: int, shrink_thres: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(mem_dim, fea_dim))
        self.shrink_thres = shrink_thres
        stdv = 1.0 / math.sqrt(fea_dim)
        nn.init.uniform_(self.weight, -stdv, stdv)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (N, fea_dim)`` to ``(read-out (N, fea_dim), attention (N, mem_dim))``."""
        att = torch.softmax(F.linear(z, self.weight), dim=1)
        if self.shrink_thres > 0:
            lam = self.shrink_thres
            att = F.relu(att - lam) * att / (torch.abs(att - lam) + 1e-12)
            att = F.normalize(att, p=1.0, dim=1)
        return F.linear(att, self.weight.t()), att


class MemAE(AE):
    """AE with a memory module on the latent (DDAD backbone "MemAE": 25 items; the loss weighs the addressing entropy
    by 0.0002)."""

    def __init__(
        self,
        in_channels: int = 1,
        latent_size: int = 16,
        multiplier: float = 1.0,
        image_size: int = 64,
        mem_dim: int = 25,
        shrink_thres: float = 0.0,
    ) -> None:
        super().__init__(in_channels, latent_size, multiplier, image_size, uncertainty=False)
        self.memory = MemoryUnit(mem_dim, latent_size, shrink_thres)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and memory attention."""
        z, att = self.memory(self.encode(x))
        return self.decode(z), att

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(x)[0]

    def training_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the loss reads: ``{"output": reconstruction, "attention": memory addressing weights}``."""
        rec, att = self.forward_with_attention(x)
        return {"output": rec, "attention": att}


def build_backbone(
    backbone: str = "ae-u",
    in_channels: int = 1,
    latent_size: int = 16,
    multiplier: float = 1.0,
    image_size: int = 64,
    mem_dim: int = 25,
    shrink_thres: float = 0.0,
) -> AE:
    """One DDAD backbone by name: ``"ae"``, ``"ae-u"`` or ``"memae"``."""
    name = backbone.lower()
    if name == "memae":
        return MemAE(in_channels, latent_size, multiplier, image_size, mem_dim, shrink_thres)
    if name in ("ae", "ae-u"):
        return AE(in_channels, latent_size, multiplier, image_size, uncertainty=name == "ae-u")
    raise ValueError(f"unknown DDAD backbone {backbone!r}; choose one of {BACKBONES}")


class AEEnsemble(nn.Module):
    """K backbones of one kind that differ only by initialisation (and, in training, data order).

    ``forward`` runs every member on the same images and returns ``(B, K, C_out, H, W)``; ``training_outputs`` takes
    a member axis ``(B, K, C, H, W)`` (each member its own images, see :class:`~medad_monai.data.EnsembleDataset`)
    and returns what :class:`~medad_monai.losses.autoencoder.EnsembleReconstructionLoss` sums over the members.
    With ``vectorised``, ``training_outputs`` runs the members as one grouped computation
    (:func:`~medad_monai.networks.grouped_ensemble.grouped_outputs`: the same values and gradients; faster where
    kernel launches dominate, slower on CPU); ``forward`` (inference, TorchScript) always loops.
    """

    def __init__(
        self, num_members: int = 3, backbone: str = "ae-u", vectorised: bool = False, **backbone_kwargs: float
    ) -> None:
        super().__init__()
        if num_members < 2:
            raise ValueError(f"an ensemble needs at least 2 members (std over members), got {num_members}")
        self.members = nn.ModuleList([build_backbone(backbone, **backbone_kwargs) for _ in range(num_members)])
        self.vectorised = bool(vectorised)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)

    def training_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """``{"images": x, "outputs": [member k's output on x[:, k]], "attention": [...] (MemAE)}``."""
        if x.ndim != 5 or x.shape[1] != len(self.members):
            raise ValueError(f"expected images (B, K={len(self.members)}, C, H, W), got {tuple(x.shape)}")
        if self.vectorised:
            outputs, attention = grouped_outputs(list(self.members), x)
            grouped: dict[str, torch.Tensor | list[torch.Tensor]] = {"images": x, "outputs": list(outputs.unbind(1))}
            if attention is not None:
                grouped["attention"] = list(attention.unbind(1))
            return grouped
        per_member = [member.training_outputs(x[:, k]) for k, member in enumerate(self.members)]
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {"images": x, "outputs": [o["output"] for o in per_member]}
        if all("attention" in o for o in per_member):
            out["attention"] = [o["attention"] for o in per_member]
        return out
