"""PDD's training objective (Lu et al., CVPR 2026, §3.4; official ``scripts/train_two_twins_ddp.py`` with
``layerloss == 4``), over the features :meth:`medad_monai.networks.pdd.PDD.training_outputs` returns.

    L = w_pm MSE(S_1, T) + w_pc C(S_1, T)      Student 1 ("prior") against the targets (paper: L_prp)
      + w_qm MSE(T, S_2) [+ w_qc (1 - cos)]    Student 2 ("plain")
      + w_div L_div(S_1, S_2)                  diversity (paper Eq. for L_div, :func:`diversity_loss`)

MSE and the cosine are taken on each level's flattened map per image and summed over levels
(:mod:`~medad_monai.losses.feature_regression`). ``C`` is the cosine *similarity* in the official code and the
cosine *distance* ``1 - cos`` in the paper's ``L_prp`` (``prior_cosine``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from medad_monai.losses.diversity import diversity_loss
from medad_monai.losses.feature_regression import level_cosine, level_mse
from medad_monai.losses.terms import TermsLoss

__all__ = ["PRIOR_COSINE", "PDDLoss"]

PRIOR_COSINE = ("similarity", "distance")


class PDDLoss(TermsLoss):
    """PDD's loss; terms ``prior``, ``plain``, ``div``.

    Args:
        prior_mse_weight, prior_cos_weight: Student 1 ("prior") terms against the targets (official 0.02, 0.05).
        prior_cosine: ``"similarity"``: the official code adds ``prior_cos_weight * cos``; ``"distance"``: the
            paper's ``L_prp`` adds ``prior_cos_weight * (1 - cos)``.
        plain_mse_weight: Student 2 ("plain") MSE weight (official 0.02).
        plain_cos_weight: Student 2 cosine-distance (``1 - cos``) weight (ours; official 0). With MSE weights 0 and
            both cosine weights 1 (``prior_cosine="distance"``) the students are distilled with reverse
            distillation's scale-free loss, which does not depend on the teachers' feature magnitudes.
        diversity_weight: weight of the diversity loss (official 0.5).
        tau_low, tau_high: diversity hinges (official and paper, HeadCT: 0.75 and 0.30).
        diverse_levels: how many of the shallowest levels get the diversity hinge (official ``low_dim_layers=1``);
            the deeper levels get the consistency hinge. The network's ``diverse_levels`` must be the same (the
            bundle configs set both from one key).
        diversity_per_pixel: cosine per pixel (``True``) or of the flattened maps per image (``False``, official).
    """

    def __init__(
        self,
        prior_mse_weight: float = 0.02,
        prior_cos_weight: float = 0.05,
        prior_cosine: str = "similarity",
        plain_mse_weight: float = 0.02,
        plain_cos_weight: float = 0.0,
        diversity_weight: float = 0.5,
        tau_low: float = 0.75,
        tau_high: float = 0.30,
        diverse_levels: int = 1,
        diversity_per_pixel: bool = False,
    ) -> None:
        super().__init__()
        if prior_cosine not in PRIOR_COSINE:
            raise ValueError(f"PDDLoss: prior_cosine must be one of {PRIOR_COSINE}, got {prior_cosine!r}")
        if diverse_levels < 0:
            raise ValueError(f"PDDLoss: diverse_levels must be >= 0, got {diverse_levels}")
        self.prior_mse_weight, self.prior_cos_weight = float(prior_mse_weight), float(prior_cos_weight)
        self.prior_cosine, self.plain_mse_weight = prior_cosine, float(plain_mse_weight)
        self.plain_cos_weight = float(plain_cos_weight)
        self.diversity_weight, self.tau_low, self.tau_high = float(diversity_weight), float(tau_low), float(tau_high)
        self.diverse_levels, self.diversity_per_pixel = int(diverse_levels), bool(diversity_per_pixel)

    def forward(self, pred: dict[str, list[Tensor]], target: Any = None) -> Tensor:
        """``pred``: ``{"targets", "prior", "plain"}``, one ``(B, C_k, h_k, w_k)`` map per level, shallow first."""
        targets, s_prior, s_plain = pred["targets"], pred["prior"], pred["plain"]
        levels = len(targets)
        if self.diverse_levels > levels:
            raise ValueError(f"PDDLoss: diverse_levels {self.diverse_levels} exceeds the {levels} feature levels")
        cos = level_cosine(s_prior, targets)
        if self.prior_cosine == "distance":
            cos = levels - cos  # sum over levels of (1 - cos)
        prior = self.prior_mse_weight * level_mse(s_prior, targets) + self.prior_cos_weight * cos
        plain = self.plain_mse_weight * level_mse(targets, s_plain)
        if self.plain_cos_weight:
            plain = plain + self.plain_cos_weight * (levels - level_cosine(s_plain, targets))
        div = diversity_loss(
            s_prior,
            s_plain,
            shallow_levels=tuple(range(self.diverse_levels)),
            deep_levels=tuple(range(self.diverse_levels, levels)),
            tau_low=self.tau_low,
            tau_high=self.tau_high,
            per_pixel=self.diversity_per_pixel,
        )
        return self._record(prior + plain + self.diversity_weight * div, prior=prior, plain=plain, div=div)
