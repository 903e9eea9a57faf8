"""Log the epoch average of every term of the training loss (e.g. ``rec``, ``logvar``, ``ssd``, ``tsd``)."""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

__all__ = ["LossTermsLogger", "step_terms"]


def step_terms(engine: Engine) -> dict[str, torch.Tensor]:
    """The named terms of the last iteration's loss: the loss module's :attr:`~medad_monai.losses.terms.TermsLoss.terms`
    when it keeps them, else the scalar entries of the trainer's ``pred`` dict."""
    terms = getattr(getattr(engine, "loss_function", None), "terms", None)
    if isinstance(terms, dict) and terms:
        return terms
    out = engine.state.output
    pred = out.get(CommonKeys.PRED) if isinstance(out, dict) else None
    if not isinstance(pred, dict):
        return {}
    return {k: v for k, v in pred.items() if isinstance(v, torch.Tensor) and v.numel() == 1}


class LossTermsLogger:
    """Averages the terms of the training loss (:func:`step_terms`, which include the total ``loss``) over each
    epoch.

    The averages are logged (``logger_name``) and stored in ``engine.state.metrics`` as ``<prefix><term>`` (e.g.
    ``epoch_loss``, ``epoch_prior``), which MONAI's ``MLFlowHandler`` and ``TensorBoardStatsHandler`` record every
    epoch.

    Args:
        tag: label of the log line (e.g. ``"NDM"``).
        logger_name: logger of the log line.
        prefix: of the metric names. Not ``train_``: MONAI's MLflow settings record the loss of every iteration as
            ``train_loss``, and a metric of the same name would mix iteration and epoch steps. Trainers that record
            into the same run need different prefixes (DDAD: ``ndm_epoch_``, ``udm_epoch_``, ``asr_epoch_``).
    """

    def __init__(self, tag: str = "", logger_name: str = "medad_monai", prefix: str = "epoch_") -> None:
        self.tag = tag
        self.prefix = prefix
        self.logger = logging.getLogger(logger_name)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._count = 0

    def _update(self, engine: Engine) -> None:
        terms = step_terms(engine)
        if not terms:
            return
        for name, value in terms.items():
            self._sums[name] += float(value.detach())
        self._count += 1

    def _log(self, engine: Engine) -> None:
        if not self._count:
            return
        means = {name: total / self._count for name, total in self._sums.items()}
        for name, value in means.items():
            engine.state.metrics[f"{self.prefix}{name}"] = value
        terms = "  ".join(f"{k}: {v:.5f}" for k, v in means.items())
        self.logger.info(f"{self.tag} epoch {engine.state.epoch}/{engine.state.max_epochs}  {terms}")
