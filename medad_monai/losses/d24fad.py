"""D²4FAD's training objective (Dong et al., ICLR 2026, §3; official ``main.py::train``), over the features
:meth:`medad_monai.networks.d24fad.D24FAD.episode_outputs` returns:

    L = SSD + tsd_weight * TSD,   SSD = sum_k [1 - cos(vec S_k(query), vec prototype_k)]
                                  TSD = sum_k [1 - cos(vec T_k(query), vec S_k(query))]

with the flattened-map cosine of reverse distillation (:func:`~medad_monai.losses.distillation.
cosine_distillation_loss`, batch means): student self-distillation against the learn-to-weight prototype of the
support set, and teacher-student distillation of the query.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from medad_monai.losses.distillation import cosine_distillation_loss
from medad_monai.losses.terms import TermsLoss

__all__ = ["D24FADLoss"]


class D24FADLoss(TermsLoss):
    """D²4FAD's loss; terms ``ssd``, ``tsd``.

    Args:
        tsd_weight: weight of the teacher-student term (official 0.1: ``loss = loss1 + 0.1 * loss2``).
    """

    def __init__(self, tsd_weight: float = 0.1) -> None:
        super().__init__()
        self.tsd_weight = float(tsd_weight)

    def forward(self, pred: dict[str, list[Tensor]], target: Any = None) -> Tensor:
        """``pred``: ``{"query", "prototype", "teacher"}``, one ``(B, C_k, h_k, w_k)`` map per scale."""
        query, teacher = pred["query"], pred["teacher"]
        ssd = cosine_distillation_loss(query, pred["prototype"])
        tsd = cosine_distillation_loss(teacher[: len(query)], query)
        return self._record(ssd + self.tsd_weight * tsd, ssd=ssd, tsd=tsd)
