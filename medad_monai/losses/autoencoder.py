"""The training loss of DDAD's autoencoder ensembles (Cai et al., MedIA 2023, §3.2 and §4.2), over what
:meth:`medad_monai.networks.autoencoders.AEEnsemble.training_outputs` returns: each member's loss on its own batch,
summed over the members (the members differ by initialisation and data order only).

* ``"ae"``: the mean squared error;
* ``"ae-u"``: the heteroscedastic loss of MedIA 2023 Eq. 9 (:func:`~medad_monai.losses.reconstruction.
  heteroscedastic_loss`) on the mean and log-variance channels;
* ``"memae"``: the mean squared error plus ``entropy_weight`` times the memory-addressing entropy (Gong et al.,
  ICCV 2019, Eq. 10; DDAD's weight 0.0002).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from medad_monai.losses.memory import addressing_entropy
from medad_monai.losses.reconstruction import heteroscedastic_loss
from medad_monai.losses.terms import TermsLoss

__all__ = ["BACKBONE_LOSSES", "EnsembleReconstructionLoss", "member_loss"]

BACKBONE_LOSSES = ("ae", "ae-u", "memae")


def member_loss(
    backbone: str, output: Tensor, image: Tensor, attention: Tensor | None = None, entropy_weight: float = 0.0002
) -> tuple[Tensor, dict[str, Tensor]]:
    """One member's loss on its batch and the terms the training log shows (detached).

    Args:
        backbone: ``"ae"``, ``"ae-u"`` or ``"memae"``.
        output: the member's output ``(B, C, H, W)`` (AE-U: ``(B, 2C, H, W)``, mean then log variance).
        image: the batch it reconstructs ``(B, C, H, W)``.
        attention: MemAE's memory addressing weights ``(B, mem_dim)``.
        entropy_weight: MemAE's entropy weight.
    """
    if backbone == "ae-u":
        channels = image.shape[1]
        mean, logvar = output[:, :channels], output[:, channels:]
        loss = heteroscedastic_loss(mean, logvar, image)
        return loss, {"rec": F.mse_loss(mean.detach(), image), "logvar": logvar.detach().mean()}
    mse = F.mse_loss(output, image)
    if backbone == "memae":
        if attention is None:
            raise ValueError("member_loss: MemAE's loss needs the memory attention")
        ent = addressing_entropy(attention)
        return mse + entropy_weight * ent, {"rec": mse.detach(), "entropy": ent.detach()}
    return mse, {"rec": mse.detach()}


class EnsembleReconstructionLoss(TermsLoss):
    """The sum over the ensemble of :func:`member_loss`; terms: the mean over members of each member term.

    Args:
        backbone: the ensemble's backbone, ``"ae"``, ``"ae-u"`` (DDAD's default) or ``"memae"``.
        entropy_weight: MemAE's entropy weight (0.0002 in the official configs).
    """

    def __init__(self, backbone: str = "ae-u", entropy_weight: float = 0.0002) -> None:
        super().__init__()
        if backbone.lower() not in BACKBONE_LOSSES:
            raise ValueError(f"unknown DDAD backbone {backbone!r}; choose one of {BACKBONE_LOSSES}")
        self.backbone, self.entropy_weight = backbone.lower(), float(entropy_weight)

    def forward(self, pred: dict[str, Any], target: Any = None) -> Tensor:
        """``pred``: ``{"images": (B, K, C, H, W), "outputs": [K member outputs]}`` (+ ``"attention"`` for MemAE)."""
        images, outputs = pred["images"], pred["outputs"]
        attention = pred.get("attention") or [None] * len(outputs)
        total = images.new_zeros(())
        logs: dict[str, Tensor] = {}
        for k, output in enumerate(outputs):
            loss, terms = member_loss(self.backbone, output, images[:, k], attention[k], self.entropy_weight)
            total = total + loss
            for name, value in terms.items():
                logs[name] = logs.get(name, images.new_zeros(())) + value / len(outputs)
        return self._record(total, **logs)
