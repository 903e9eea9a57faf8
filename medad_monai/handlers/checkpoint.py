"""Save a network's flat state dict atomically (MONAI's ``CheckpointSaver`` writes in place, non-atomically), and
load one with errors that name the file."""

from __future__ import annotations

import logging
import os
import traceback

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from torch import nn

from medad_monai.distributed import is_rank_zero
from medad_monai.io import atomic_torch_save, remove_stale_temporaries

__all__ = ["AtomicModelSaver", "CheckpointLoader", "CheckpointReadError"]


class CheckpointReadError(RuntimeError):
    """A checkpoint file is missing, truncated or not a checkpoint; the message names the file."""


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments), whose read errors name the file.

    ``torch.load`` of a truncated or foreign file says ``PytorchStreamReader failed reading zip archive: failed
    finding central directory`` without the path. MONAI's loader does the reading (``weights_only=True``); a
    checkpoint that does not fit the network keeps its own error
    (:class:`~medad_monai.networks.architecture.ArchitectureMismatchError` names the options).
    """

    def __call__(self, engine: Engine) -> None:
        path = self.load_path
        if not os.path.isfile(path):
            raise CheckpointReadError(f"checkpoint '{path}' not found: train the bundle first, or set --ckpt_dir")
        try:
            super().__call__(engine)
        except Exception as e:
            # only errors of reading the file itself (raised inside torch.load); load_state_dict errors pass
            frames = traceback.extract_tb(e.__traceback__)
            if not any(f.filename.replace(os.sep, "/").endswith("torch/serialization.py") for f in frames):
                raise
            raise CheckpointReadError(
                f"cannot read checkpoint '{path}' ({os.path.getsize(path)} bytes): {type(e).__name__}: {e}; "
                "it may be truncated (an interrupted copy) or not a PyTorch checkpoint"
            ) from e


class AtomicModelSaver:
    """Write ``network.state_dict()`` to ``save_dir/filename`` when the engine completes, through a temporary file
    and ``os.replace``, so a killed or failed run never replaces a working model with a half-trained one.

    With ``epoch_interval > 0`` the state is also written every ``epoch_interval`` epochs, to its own file
    ``<stem>.last_epoch<suffix>`` beside the model (never ``filename``). Temporary files a killed earlier save left
    beside either file are removed when training starts.

    The flat state dict is what MONAI's ``CheckpointLoader(load_dict={"model": net})``, ``ckpt_export`` and
    MONAI Label load.
    """

    def __init__(
        self, save_dir: str | os.PathLike, network: nn.Module, filename: str = "model.pt", epoch_interval: int = 0
    ) -> None:
        self.path = os.path.join(save_dir, filename)
        stem, suffix = os.path.splitext(filename)
        self.epoch_path = os.path.join(save_dir, f"{stem}.last_epoch{suffix}")
        self.network, self.epoch_interval = network, epoch_interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.clean)
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save_epoch)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def clean(self, engine: Engine | None = None) -> None:
        if not is_rank_zero():
            return
        for tmp in remove_stale_temporaries(self.path) + remove_stale_temporaries(self.epoch_path):
            logging.getLogger("medad_monai").info(f"removed {tmp}, left by an interrupted save")

    def save_epoch(self, engine: Engine | None = None) -> None:
        if not is_rank_zero():
            return
        atomic_torch_save(self.network.state_dict(), self.epoch_path)
        epoch = f" (epoch {engine.state.epoch})" if engine is not None else ""
        logging.getLogger("medad_monai").info(f"saved the epoch checkpoint{epoch} to {self.epoch_path}")

    def save(self, engine: Engine | None = None) -> None:
        if not is_rank_zero():  # multi-process training: one writer
            return
        atomic_torch_save(self.network.state_dict(), self.path)
        logging.getLogger("medad_monai").info(f"saved model to {self.path}")
