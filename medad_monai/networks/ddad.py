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

Beyond the paper (options, off by default unless the bundle README says otherwise):

* ``refinement="monotone"`` (:class:`MonotoneASRNet`): ASR-Net constrained to be non-decreasing in every input
  pixel, so that a discrepancy larger than anything seen in training can never lower the anomaly probability;
* ``refine_input="saturate"``: ASR-Net sees ``x / (x + q)`` per channel, ``q`` a high quantile of the channel on
  validation normals (:meth:`DDAD.fit_refinement_input`), so inputs beyond the training range are compressed into
  ``[0, 1)`` instead of extrapolated;
* ``output_map="auto"``: the served map is chosen after training, without labels, by how well each image score
  separates held-out validation normals from held-out unlabeled images (:mod:`medad_monai.metrics.score_selection`),
  and stored in the ``served_map`` buffer.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from medad_monai.networks.architecture import check_architecture, record_architecture
from medad_monai.networks.autoencoders import AEEnsemble
from medad_monai.networks.body_extent import fill_missing_body_extent, register_body_extent
from medad_monai.networks.calibration import fill_missing_calibration_scores, register_calibration_scores
from medad_monai.networks.volume_threshold import fill_missing_volume_calibration, register_volume_calibration
from medad_monai.scores import image_score

__all__ = ["ASRNet", "DDAD", "MonotoneASRNet", "OUTPUT_MAPS", "REFINEMENTS", "REFINE_INPUTS"]

# Maps ``forward`` can serve; ``served_map`` indexes this tuple ("auto" picks one of them after training).
OUTPUT_MAPS = ("refined", "rec", "intra", "inter")
REFINEMENTS = ("asr", "monotone")
REFINE_INPUTS = ("raw", "saturate")

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


class _PositiveConv2d(nn.Module):
    """3x3 convolution whose weights are ``softplus`` of free parameters: non-decreasing in every input pixel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        fan_in = in_channels * 9
        # softplus(raw) starts near 1 / fan_in, so a sum over the receptive field stays of the input's order
        self.raw_weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3) * 0.5 - math.log(fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, F.softplus(self.raw_weight), self.bias, padding=1)


class _PositiveBatchNorm2d(nn.Module):
    """BatchNorm with a positive scale (``softplus``): a non-decreasing map in both train and eval mode."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.raw_scale = nn.Parameter(torch.full((channels,), math.log(math.e - 1)))  # softplus -> 1
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * F.softplus(self.raw_scale).view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


class MonotoneASRNet(nn.Module):
    """ASR-Net constrained to be non-decreasing in its inputs (ours, beyond MedIA 2023 §3.4).

    Same layout as :class:`ASRNet` (two hidden 3x3 layers of ``mid_channels`` with BatchNorm and ReLU), but every
    convolution has non-negative weights and every BatchNorm a positive scale, and the last layer gives one anomaly
    logit ``z`` returned as the two-class logits ``(-z / 2, z / 2)``. Each layer is a non-decreasing function of its
    input, so ``P(anomaly) = sigmoid(z)`` can only rise when any input discrepancy rises: a lesion whose discrepancy
    exceeds every synthetic training anomaly cannot be mapped to "normal", the failure the paper's unconstrained
    network shows when the synthetic anomalies leave little trace (bundle README).
    """

    def __init__(self, in_channels: int, mid_channels: int = 128) -> None:
        super().__init__()
        self.model = nn.Sequential(
            _PositiveConv2d(in_channels, mid_channels),
            _PositiveBatchNorm2d(mid_channels),
            nn.ReLU(),
            _PositiveConv2d(mid_channels, mid_channels),
            _PositiveBatchNorm2d(mid_channels),
            nn.ReLU(),
            _PositiveConv2d(mid_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return torch.cat([-0.5 * z, 0.5 * z], dim=1)


def build_refinement_net(kind: str, in_channels: int, mid_channels: int = 128) -> nn.Module:
    """``"asr"`` (:class:`ASRNet`, the paper) or ``"monotone"`` (:class:`MonotoneASRNet`)."""
    if kind == "asr":
        return ASRNet(in_channels, mid_channels)
    if kind == "monotone":
        return MonotoneASRNet(in_channels, mid_channels)
    raise ValueError(f"refinement must be one of {REFINEMENTS}, got {kind!r}")


class DDAD(nn.Module):
    """The whole DDAD-ASR model: NDM and UDM ensembles, both ASR-Nets, and the calibrated threshold.

    ``forward(image)`` is the bundle's ``network_def`` contract (docs/architecture.md, Contracts): image
    ``(B, 1, H, W)`` in [-1, 1] to the anomaly probability map ``(B, 1, H, W)`` of R_dual when a UDM was trained
    (``has_udm``), else R_intra. Everything inference needs is a parameter or buffer, so ``model.pt`` and
    TorchScript carry it.

    Args:
        backbone: ``"ae"``, ``"ae-u"`` (default, the paper's best) or ``"memae"``.
        num_members: K, members per ensemble (3 in the paper).
        in_channels, latent_size, multiplier, image_size: backbone shape (1, 16, 1, 64 in the paper).
        mem_dim, shrink_thres: MemAE settings (25, 0 in the official configs; its entropy weight is the loss's).
        asr_channels: ASR-Net width (128).
        eps: floor of the predicted variance in the AE-U normalisation (numerical safety only).
        output_map: the map ``forward`` serves: ``"refined"`` (the paper: R_dual with a UDM, else R_intra), one
            of ``"rec"``, ``"intra"``, ``"inter"`` (falls back to ``"intra"`` without a UDM), or ``"auto"``: chosen
            after training without labels (:meth:`set_served_map`). Thresholds are calibrated on the served map.
        refinement: ``"asr"`` (the paper's ASR-Net) or ``"monotone"`` (:class:`MonotoneASRNet`).
        refine_input: ``"raw"`` (the paper: the discrepancy maps as they are) or ``"saturate"``
            (``x / (x + q)`` per channel, ``q`` fitted on validation normals by :meth:`fit_refinement_input`).
        vectorised_members: train each ensemble's members as one grouped computation (the same values; see
            :mod:`~medad_monai.networks.grouped_ensemble`) instead of a loop; off by default (slower on CPU).
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
        asr_channels: int = 128,
        eps: float = 1e-8,
        output_map: str = "refined",
        refinement: str = "asr",
        refine_input: str = "raw",
        vectorised_members: bool = False,
    ) -> None:
        super().__init__()
        kwargs = dict(
            in_channels=in_channels,
            latent_size=latent_size,
            multiplier=multiplier,
            image_size=image_size,
            mem_dim=mem_dim,
            shrink_thres=shrink_thres,
        )
        self.ndm = AEEnsemble(num_members, backbone, vectorised_members, **kwargs)
        self.udm = AEEnsemble(num_members, backbone, vectorised_members, **kwargs)
        self.asr_intra = build_refinement_net(refinement, 1, asr_channels)
        self.asr_dual = build_refinement_net(refinement, 2, asr_channels)
        self.uncertainty = backbone.lower() == "ae-u"
        self.in_channels, self.image_size, self.eps = in_channels, image_size, eps
        if output_map not in (*OUTPUT_MAPS, "auto"):
            raise ValueError(f"output_map must be one of {(*OUTPUT_MAPS, 'auto')}, got {output_map!r}")
        if refine_input not in REFINE_INPUTS:
            raise ValueError(f"refine_input must be one of {REFINE_INPUTS}, got {refine_input!r}")
        self.output_map, self.refinement, self.refine_input = output_map, refinement, refine_input
        self.score_reduction = "mean"  # the image score is the map's mean (MedIA 2023 §3.4; medad_monai.scores)
        # Index into OUTPUT_MAPS of the map forward serves; "auto" starts at "refined" until set_served_map.
        start = "refined" if output_map == "auto" else output_map
        self.register_buffer("served_map", torch.tensor(OUTPUT_MAPS.index(start), dtype=torch.long))
        # Per-channel scale q of the saturating ASR input, channels (inter, intra); fitted on validation normals.
        self.register_buffer("input_scale", torch.ones(2))
        # Whether the UDM was trained (an unlabeled pool existed): selects R_dual vs R_intra at inference.
        self.register_buffer("has_udm", torch.tensor(False))
        # Decision threshold on the image score, calibrated on validation normals; NaN until calibrated.
        self.register_buffer("threshold", torch.tensor(float("nan")))
        register_body_extent(self)  # the body fraction of the slices it is served on, set with the threshold
        register_calibration_scores(self)  # the validation-normal scores the threshold came from
        register_volume_calibration(self)  # the threshold for 3D volumes, from normal volumes (NaN: none)
        record_architecture(
            self,
            {
                "backbone": backbone.lower(),
                "num_members": int(num_members),
                "in_channels": int(in_channels),
                "latent_size": int(latent_size),
                "multiplier": float(multiplier),
                "image_size": int(image_size),
                "mem_dim": int(mem_dim),
                "asr_channels": int(asr_channels),
                "refinement": refinement,
                "refine_input": refine_input,
            },
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors):
        check_architecture(self, state_dict, prefix)
        fill_missing_body_extent(state_dict, prefix)
        fill_missing_calibration_scores(state_dict, prefix)
        fill_missing_volume_calibration(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected, errors)

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

    def refinement_inputs(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ASR-Net inputs: ``intra`` ``[A_intra]`` and, if a UDM exists, ``dual`` ``[A_inter, A_intra]``, after the
        ``refine_input`` transform."""
        intra = maps["intra"]
        if self.refine_input == "saturate":
            intra = intra / (intra + self.input_scale[1])
        out = {"intra": intra}
        if "inter" in maps:
            inter = maps["inter"]
            if self.refine_input == "saturate":
                inter = inter / (inter + self.input_scale[0])
            out["dual"] = torch.cat([inter, intra], dim=1)
        return out

    def refine(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ASR logits from :meth:`refinement_inputs`: ``r_intra`` and, with a UDM, ``r_dual``."""
        out = {"r_intra": self.asr_intra(inputs["intra"])}
        if "dual" in inputs:
            out["r_dual"] = self.asr_dual(inputs["dual"])
        return out

    def refined_maps(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ASR logits: ``r_intra`` from ``[A_intra]`` and, if a UDM exists, ``r_dual`` from ``[A_inter, A_intra]``."""
        return self.refine(self.refinement_inputs(maps))

    def all_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score map: ``rec``, ``intra``, ``inter`` and the anomaly probabilities ``r_intra``, ``r_dual``."""
        maps = self.discrepancy_maps(x)
        for name, logits in self.refined_maps(maps).items():
            maps[name] = torch.softmax(logits, dim=1)[:, 1:2]
        return maps

    def image_scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image score of every map: the mean over pixels (MedIA 2023 §3.4), each ``(B,)``."""
        return {name: image_score(m, self.score_reduction) for name, m in self.all_maps(x).items()}

    @torch.jit.ignore
    def evaluation_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What an evaluation reads, from one pass: every map's image score (as :meth:`image_scores`) and the map
        :meth:`forward` serves, under ``"map"`` (pixel metrics, the error gallery)."""
        maps = self.all_maps(x)
        out = {name: image_score(m, self.score_reduction) for name, m in maps.items()}
        served = self.served_map_name()
        if served == "refined":
            served = "r_dual" if "r_dual" in maps else "r_intra"
        out["map"] = maps[served] if served in maps else maps["intra"]  # as forward: intra without a UDM
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly map ``(B, 1, H, W)``: the ``served_map`` (by default R_dual if the UDM was trained, else R_intra)."""
        maps = self.discrepancy_maps(x)
        served = int(self.served_map)
        if served != 0:  # OUTPUT_MAPS[0] == "refined"
            key = ["refined", "rec", "intra", "inter"][served]  # literal: TorchScript cannot index module globals
            return maps[key] if key in maps else maps["intra"]
        refined = self.refined_maps(maps)
        logits = refined["r_dual"] if "r_dual" in refined else refined["r_intra"]
        return torch.softmax(logits, dim=1)[:, 1:2]

    @torch.jit.ignore
    def served_map_name(self) -> str:
        """The name (in :data:`OUTPUT_MAPS`) of the map ``forward`` serves."""
        return OUTPUT_MAPS[int(self.served_map)]

    @torch.jit.ignore
    def set_served_map(self, name: str) -> None:
        """Serve ``name`` (one of :data:`OUTPUT_MAPS`) from now on; stored in ``model.pt``."""
        if name not in OUTPUT_MAPS:
            raise ValueError(f"served map must be one of {OUTPUT_MAPS}, got {name!r}")
        self.served_map.fill_(OUTPUT_MAPS.index(name))

    @torch.jit.ignore
    def fit_refinement_input(self, maps: dict[str, torch.Tensor], quantile: float = 0.99) -> None:
        """Set the saturating input's per-channel scale ``q`` to the ``quantile`` of the pixel values of ``inter``
        and ``intra`` over ``maps`` (discrepancy maps of validation normals, :meth:`discrepancy_maps`)."""
        for i, name in enumerate(("inter", "intra")):
            if name in maps:
                values = maps[name].detach().flatten().float()
                q = torch.quantile(values[:: max(1, values.numel() // 2**20)], quantile)  # quantile's size limit
                self.input_scale[i] = q.clamp_min(self.eps)

    @torch.jit.ignore
    def score_names(self) -> list[str]:
        """The image scores this model provides (A_inter and R_dual need a trained UDM)."""
        return ["rec", "intra", "inter", "r_intra", "r_dual"] if bool(self.has_udm) else ["rec", "intra", "r_intra"]

    @torch.jit.ignore
    def refinement_outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """ASR-Net logits on synthetic anomalies (MedIA 2023 §3.4): ``r_intra`` and, when a UDM exists, ``r_dual``,
        which :class:`~medad_monai.losses.focal.RefinementLoss` compares with the synthetic masks.

        The ensembles are frozen (eval mode, no gradients); only the ASR heads get gradients.
        """
        self.ndm.eval()
        self.udm.eval()
        with torch.no_grad():
            maps = self.discrepancy_maps(image)
        return self.refined_maps(maps)

    @torch.jit.ignore
    def asr_parameters(self) -> list[nn.Parameter]:
        """Parameters the refinement stage optimises (both heads; an untrained R_dual gets no gradient)."""
        return [*self.asr_intra.parameters(), *self.asr_dual.parameters()]
