"""The base of the methods' training objectives: a loss module that also keeps its named terms for logging.

A method's loss is declared in its bundle's ``train.json`` (``"loss"``, handed to MONAI's ``SupervisedTrainer`` as
``loss_function``), as model-zoo bundles declare theirs; the network only computes what the loss reads. MONAI's
trainer keeps the scalar it returns; the terms it is made of (e.g. PDD's ``prior``, ``plain``, ``div``) stay on the
module as :attr:`TermsLoss.terms`, which :class:`~medad_monai.handlers.loss_terms.LossTermsLogger` averages per
epoch.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor, nn

__all__ = ["TermsLoss"]


class TermsLoss(nn.Module):
    """``forward(pred, target=None) -> scalar loss``; :attr:`terms`: the last call's ``loss`` and its named terms,
    detached (what the training log shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.terms: dict[str, Tensor] = {}

    def _record(self, loss: Tensor, **terms: Tensor) -> Tensor:
        """Keep ``loss`` and ``terms`` (detached) for logging; returns ``loss`` (with its graph)."""
        self.terms = {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}}
        return loss

    @abstractmethod
    def forward(self, pred: Any, target: Any = None) -> Tensor:
        """The method's loss of ``pred`` (what its network's training method returned); calls :meth:`_record`."""
