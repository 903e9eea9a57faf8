"""Image-level AUROC and AP of each score a model provides, through MONAI's ``ROCAUC`` and ``AveragePrecision``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.handlers import ROCAUC, AveragePrecision, MetricsSaver, from_engine
from torch import nn

__all__ = ["ScoreMetrics"]


class ScoreMetrics:
    """Attach ``<score>_auroc`` and ``<score>_ap`` metrics for every image score in the evaluator output.

    Which scores exist can depend on the loaded checkpoint (DDAD has A_inter and R_dual only with a UDM), so the
    metrics are attached when the run starts, after the checkpoint loader (attach this handler after it), using
    ``network.score_names()`` when the network has it, else ``score_names``.

    Their values are nevertheless computed at the end of the epoch in this handler's place among the evaluator's
    handlers, not after every handler attached before the run: MONAI's ``MLFlowHandler`` (``--tracking mlflow``
    appends it to the evaluator's handlers) records ``engine.state.metrics`` when the epoch completes, and would
    otherwise run before them.

    Args:
        score_names: candidate score keys in the decollated output.
        network: optional model whose ``score_names()`` lists the available scores.
        label_key: key of the 0/1 image label.
        save_dir: if given, MONAI's ``MetricsSaver`` writes ``metrics.csv`` there (attached after the metrics, so
            it sees their values).
    """

    def __init__(
        self,
        score_names: Sequence[str] = ("score",),
        network: nn.Module | None = None,
        label_key: str = "label",
        save_dir: str | None = None,
    ) -> None:
        self.score_names, self.network, self.label_key = list(score_names), network, label_key
        self.save_dir = save_dir
        self.attached: list[str] = []
        self._metrics: dict[str, Metric] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._attach_metrics)
        # registered now, so it runs before the EPOCH_COMPLETED handlers attached after this one
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def available(self) -> list[str]:
        if self.network is not None and hasattr(self.network, "score_names"):
            provided = set(self.network.score_names())
            return [n for n in self.score_names if n in provided]
        return list(self.score_names)

    def _attach_metrics(self, engine: Engine) -> None:
        if self.attached:
            return
        for name in self.available():
            transform = from_engine([name, self.label_key])
            self._metrics[f"{name}_auroc"] = ROCAUC(output_transform=transform)
            self._metrics[f"{name}_ap"] = AveragePrecision(output_transform=transform)
            self.attached.append(name)
        for metric_name, metric in self._metrics.items():
            metric.attach(engine, metric_name)
            # Ignite computes an attached metric in an EPOCH_COMPLETED handler added now, i.e. after every handler
            # attached before the run; :meth:`_complete` computes it in this handler's place instead
            engine.remove_event_handler(metric.completed, Events.EPOCH_COMPLETED)
        if self.save_dir is not None:
            MetricsSaver(save_dir=self.save_dir, metrics="*").attach(engine)
        logging.getLogger("medad_monai").info(f"evaluating image scores: {', '.join(self.attached)}")

    def _complete(self, engine: Engine) -> None:
        for metric_name, metric in self._metrics.items():
            metric.completed(engine, metric_name)
