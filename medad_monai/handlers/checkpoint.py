"""Save a network's flat state dict atomically (MONAI's ``CheckpointSaver`` writes in place, non-atomically)."""

from __future__ import annotations

import logging
import os

from ignite.engine import Engine, Events
from torch import nn

from medad_monai.engines.distributed import is_rank_zero
from medad_monai.io import atomic_torch_save

__all__ = ["AtomicModelSaver"]


class AtomicModelSaver:
    """Write ``network.state_dict()`` to ``save_dir/filename`` when the engine completes (and every
    ``epoch_interval`` epochs if > 0), through a temporary file and ``os.replace``.

    The flat state dict is what MONAI's ``CheckpointLoader(load_dict={"model": net})``, ``ckpt_export`` and
    MONAI Label load.
    """

    def __init__(
        self, save_dir: str | os.PathLike, network: nn.Module, filename: str = "model.pt", epoch_interval: int = 0
    ) -> None:
        self.path = os.path.join(save_dir, filename)
        self.network, self.epoch_interval = network, epoch_interval

    def attach(self, engine: Engine) -> None:
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine | None = None) -> None:
        if not is_rank_zero():  # multi-process training: one writer
            return
        atomic_torch_save(self.network.state_dict(), self.path)
        logging.getLogger("medad_monai").info(f"saved model to {self.path}")
