"""Experiment tracking through MONAI's own settings: ``python -m monai.bundle run ... --tracking mlflow``.

MONAI's tracking settings (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) append an ``MLFlowHandler`` to
``train#handlers`` (the trainer), ``validate#handlers`` and ``handlers`` (the evaluator). That handler records the
trainer's loss per iteration, ``engine.state.metrics`` per epoch (where
:class:`~medad_monai.handlers.loss_terms.LossTermsLogger` puts the epoch means of the loss terms) and
``max_epochs``/``epoch_length`` as parameters.
:class:`RunTracking` adds what the bundles need beyond that, and is a no-op when tracking is off:

* the bundle's hyper-parameters as run parameters;
* for a training made of several trainers run in sequence (DDAD: NDM, UDM, ASR-Net, then the calibration), one run
  for all of them: MONAI attaches its handler to ``train#trainer`` alone and closes the run when that trainer
  completes, so the later stages would otherwise go unrecorded (or, with handlers of their own, into new runs).

A config item cannot refer to the list that holds it, so :class:`RunTracking` is not one of ``train#handlers`` but
takes that list (whose handler instances are the ones the trainer gets) and the engines to follow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

__all__ = ["RunTracking", "mlflow_handlers"]

logger = logging.getLogger("medad_monai")


def mlflow_handlers(handlers: Iterable[Any] | None) -> list[MLFlowHandler]:
    """The ``MLFlowHandler`` instances in a handler list (those ``--tracking mlflow`` appended); disabled items
    (``None``) and other handlers are skipped."""
    return [h for h in handlers or () if isinstance(h, MLFlowHandler)]


class RunTracking:
    """Bundle parameters and multi-trainer runs for MONAI's ``MLFlowHandler`` (module docstring).

    Args:
        handlers: the handler list MONAI's tracking settings append their ``MLFlowHandler`` to (``train#handlers``).
            Without one (no ``--tracking``) every method does nothing.
        params: the bundle's hyper-parameters, logged as run parameters (``str(value)``, as MONAI logs its own)
            when a followed engine starts. Names MONAI records itself from the engine (``max_epochs``,
            ``epoch_length``) are left to it: it logs the engine's actual values.
        engines: engines to :meth:`follow` now (``train#trainer``). List them first in the config item, so that the
            config builds them in the same order as the ``run`` expression would: MONAI's ``DataLoader`` resets the
            global generator to its initial seed when it is built, so the order of instantiation matters for the
            network's initial weights (with this order, training is bit-identical to a run without the item).
    """

    def __init__(
        self,
        handlers: Sequence[Any] | None,
        params: Mapping[str, Any] | None = None,
        engines: Sequence[Engine] = (),
    ) -> None:
        self.handlers = mlflow_handlers(handlers)
        skip = set(MLFlowHandler.default_tracking_params)
        self.params = {str(k): v for k, v in (params or {}).items() if k not in skip}
        self._logged: set[str] = set()  # runs whose parameters are recorded
        for engine in engines:
            self.follow(engine)

    def follow(self, engine: Engine) -> None:
        """Record ``engine`` into the run of the tracked trainer: the run is started (or continued) when the engine
        starts, the parameters are logged, and ``engine.state.metrics`` is logged every epoch (the engine's metric
        names must differ from the other engines', e.g. by the ``prefix`` of its
        :class:`~medad_monai.handlers.loss_terms.LossTermsLogger`). Iterations are not logged for a followed
        engine: MLflow's steps would repeat those of the trainer MONAI attached to."""
        for handler in self.handlers:
            if not engine.has_event_handler(handler.start, Events.STARTED):
                engine.add_event_handler(Events.STARTED, handler.start)
            if not engine.has_event_handler(handler.epoch_completed, Events.EPOCH_COMPLETED):
                engine.add_event_handler(Events.EPOCH_COMPLETED, handler.epoch_completed)
        # after the handlers' start (attached before, here or by MONAI), so their run exists
        if self.handlers and not engine.has_event_handler(self._log_params, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._log_params)

    def keep_open(self, engine: Engine) -> None:
        """Do not end the run when ``engine`` completes (MONAI's trainer handler has ``close_on_complete``): a later
        engine records into the same run, and :meth:`close` ends it."""
        for handler in self.handlers:
            if engine.has_event_handler(handler.close, Events.COMPLETED):
                engine.remove_event_handler(handler.close, Events.COMPLETED)

    def close(self) -> None:
        """End the run (as MONAI's ``close_on_complete`` would have) once every followed engine has finished."""
        for handler in self.handlers:
            if handler.close_on_complete:
                handler.close()

    def _log_params(self, engine: Engine) -> None:
        for handler in self.handlers:
            self._log_run_params(handler)

    def _log_run_params(self, handler: MLFlowHandler) -> None:
        run = handler.cur_run
        if run is None or not self.params or run.info.run_id in self._logged:
            return
        from mlflow.entities import Param  # only with tracking on: mlflow is an optional extra

        run_id = run.info.run_id
        logged = handler.client.get_run(run_id).data.params
        values = {k: str(v) for k, v in self.params.items()}
        # MONAI continues an unfinished run (e.g. after a crash): MLflow refuses to change a logged parameter,
        # which would stop the training, so a changed value is reported instead
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning(
                f"MLflow run {run_id} already records other values of {', '.join(changed)}; they are left as they were"
            )
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        if new:
            handler.client.log_batch(run_id=run_id, metrics=[], params=new, tags=[])
        self._logged.add(run_id)
