"""DDAD with ASR-Net (Cai et al., "Dual-distribution discrepancy with self-supervised refinement for anomaly
detection in medical images", MedIA 2023).

Two ensembles of autoencoders: the normative distribution module (NDM, trained on known normals) and the unknown
distribution module (UDM, trained on normals plus an unlabeled pool). Per pixel (§3.2-3.3):

* ``A_rec   = (x - mean_NDM)^2``                       reconstruction error of the NDM ensemble,
* ``A_intra = std_NDM`` (unbiased, over members)       intra-discrepancy,
* ``A_inter = |mean_NDM - mean_UDM|``                  inter-discrepancy,

and with AE-U members each is divided by the mean NDM predicted variance (A_intra, A_inter as the square root of
the ratio, MedIA 2023 Eq. 10-12; official ``test.py``). ASR-Net (§3.4) refines ``[A_inter, A_intra]`` (R_dual) or
``[A_intra]`` (R_intra) into an anomaly probability map; the image score is its mean.

The official code calls the UDM "module a" and the NDM "module b"; the attribute names here follow the paper.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from medad_monai.losses.focal import focal_loss
from medad_monai.networks.autoencoders import AEEnsemble

__all__ = ["ASRNet", "DDAD", "OUTPUT_MAPS"]

OUTPUT_MAPS = ("refined", "rec", "intra", "inter")

logger = logging.getLogger("medad_monai")


class ASRNet(nn.Module):
    """Anomaly score refinement network (MedIA 2023 §3.4, official ``RefineNetwork``).

    conv3x3(in -> 128), BN, ReLU, conv3x3(128 -> 128), BN, ReLU, conv3x3(128 -> 2): logits of (normal, anomalous).
    """

    def __init__(self, in_channels: int, mid_channels: int = 128, out_channels: int = 2) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, 1, 1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 3, 1, 1),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DDAD(nn.Module):
    """The whole DDAD-ASR model: NDM and UDM ensembles, both ASR-Nets, and the calibrated threshold.

    ``forward(image)`` is the bundle's ``network_def`` contract (DESIGN §2): image ``(B, 1, H, W)`` in [-1, 1] to
    the anomaly probability map ``(B, 1, H, W)`` of R_dual when a UDM was trained (``has_udm``), else R_intra.
    Everything inference needs is a parameter or buffer, so ``model.pt`` and TorchScript carry it.

    Args:
        backbone: ``"ae"``, ``"ae-u"`` (default, the paper's best) or ``"memae"``.
        num_members: K, members per ensemble (3 in the paper).
        in_channels, latent_size, multiplier, image_size: backbone shape (1, 16, 1, 64 in the paper).
        mem_dim, shrink_thres, entropy_weight: MemAE settings (25, 0, 0.0002 in the official configs).
        asr_channels: ASR-Net width (128).
        eps: floor of the predicted variance in the AE-U normalisation (numerical safety only).
        output_map: the map ``forward`` serves: ``"refined"`` (the paper: R_dual with a UDM, else R_intra), or one
            of ``"rec"``, ``"intra"``, ``"inter"`` (falls back to ``"intra"`` without a UDM) for users whose data
            favours an unrefined score. Thresholds are calibrated on the served map.
    """

    def __init__(
        self,
        backbone: str = "ae-u",
        num_members: int = 3,
        in_channels: int = 1,
        latent_size: int = 16,
        multiplier: float = 1.0,
        image_size: int = 64,
        mem_dim: int = 25,
        shrink_thres: float = 0.0,
        entropy_weight: float = 0.0002,
        asr_channels: int = 128,
        eps: float = 1e-8,
        output_map: str = "refined",
    ) -> None:
        super().__init__()
        kwargs = dict(
            in_channels=in_channels,
            latent_size=latent_size,
            multiplier=multiplier,
            image_size=image_size,
            mem_dim=mem_dim,
            shrink_thres=shrink_thres,
            entropy_weight=entropy_weight,
        )
        self.ndm = AEEnsemble(num_members, backbone, **kwargs)
        self.udm = AEEnsemble(num_members, backbone, **kwargs)
        self.asr_intra = ASRNet(1, asr_channels)
        self.asr_dual = ASRNet(2, asr_channels)
        self.uncertainty = backbone.lower() == "ae-u"
        self.in_channels, self.image_size, self.eps = in_channels, image_size, eps
        if output_map not in OUTPUT_MAPS:
            raise ValueError(f"output_map must be one of {OUTPUT_MAPS}, got {output_map!r}")
        self.output_map = output_map
        # Whether the UDM was trained (an unlabeled pool existed): selects R_dual vs R_intra at inference.
        self.register_buffer("has_udm", torch.tensor(False))
        # Decision threshold on the image score, calibrated on validation normals; NaN until calibrated.
        self.register_buffer("threshold", torch.tensor(float("nan")))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(
                f"DDAD expects images (B, {self.in_channels}, {self.image_size}, {self.image_size}), "
                f"got {list(x.shape)}"
            )

    def discrepancy_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixel-wise ``rec`` (A_rec), ``intra`` (A_intra) and, if a UDM exists, ``inter`` (A_inter), each
        ``(B, 1, H, W)`` (MedIA 2023 Eq. 4-6, with the AE-U normalisation of Eq. 10-12)."""
        self._check(x)
        c = self.in_channels
        ndm = self.ndm(x)  # (B, K, C or 2C, H, W)
        rec_ndm = ndm[:, :, :c]
        mu_ndm = rec_ndm.mean(1)
        a_rec = ((x - mu_ndm) ** 2).mean(1, keepdim=True)
        a_intra = rec_ndm.std(1, unbiased=True).mean(1, keepdim=True)
        # AE-U: normalise by the mean NDM predicted variance (Eq. 10-12); plain AE / MemAE: variance 1.
        var = torch.ones_like(a_rec)
        if self.uncertainty:
            var = torch.exp(ndm[:, :, c:]).mean(1).mean(1, keepdim=True).clamp_min(self.eps)
        out: dict[str, torch.Tensor] = {"rec": a_rec / var, "intra": a_intra / torch.sqrt(var)}
        if bool(self.has_udm):
            mu_udm = self.udm(x)[:, :, :c].mean(1)
            out["inter"] = (mu_ndm - mu_udm).abs().mean(1, keepdim=True) / torch.sqrt(var)
        return out

    def refined_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ASR logits: ``r_intra`` from ``[A_intra]`` and, if a UDM exists, ``r_dual`` from ``[A_inter, A_intra]``."""
        out = {"r_intra": self.asr_intra(maps["intra"])}
        if "inter" in maps:
            out["r_dual"] = self.asr_dual(torch.cat([maps["inter"], maps["intra"]], dim=1))
        return out

    def all_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score map: ``rec``, ``intra``, ``inter`` and the anomaly probabilities ``r_intra``, ``r_dual``."""
        maps = self.discrepancy_maps(x)
        for name, logits in self.refined_maps(maps).items():
            maps[name] = torch.softmax(logits, dim=1)[:, 1:2]
        return maps

    def image_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image score of every map: the mean over pixels (MedIA 2023 §3.4), each ``(B,)``."""
        return {name: m.flatten(1).mean(1) for name, m in self.all_maps(x).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)``: by default R_dual if the UDM was trained, else R_intra (``output_map``)."""
        maps = self.discrepancy_maps(x)
        if self.output_map != "refined":
            key = self.output_map if self.output_map in maps else "intra"
            return maps[key]
        refined = self.refined_maps(maps)
        logits = refined["r_dual"] if "r_dual" in refined else refined["r_intra"]
        return torch.softmax(logits, dim=1)[:, 1:2]

    @torch.jit.ignore
    def score_names(self) -> list[str]:
        """The image scores this model provides (A_inter and R_dual need a trained UDM)."""
        return ["rec", "intra", "inter", "r_intra", "r_dual"] if bool(self.has_udm) else ["rec", "intra", "r_intra"]

    @torch.jit.ignore
    def refinement_step(self, image: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> dict[str, torch.Tensor]:
        """ASR-Net training step on synthetic anomalies (MedIA 2023 §3.4): focal loss of each available ASR head.

        The ensembles are frozen (eval mode, no gradients); R_intra is always trained, R_dual when a UDM exists.
        """
        self.ndm.eval()
        self.udm.eval()
        with torch.no_grad():
            maps = self.discrepancy_maps(image)
        refined = self.refined_maps(maps)
        losses = {f"focal_{name}": focal_loss(logits, mask, gamma) for name, logits in refined.items()}
        total = torch.stack(list(losses.values())).sum()
        return {"loss": total, **losses}

    @torch.jit.ignore
    def asr_parameters(self) -> list[nn.Parameter]:
        """Parameters the refinement stage optimises (both heads; an untrained R_dual gets no gradient)."""
        return [*self.asr_intra.parameters(), *self.asr_dual.parameters()]
