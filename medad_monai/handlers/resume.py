"""Continue an interrupted training where it stopped, with the result of an uninterrupted run of the same seed.

:class:`TrainingCheckpoint` writes, after every epoch and atomically, what the next epoch depends on: the trainable
part of the network (frozen teachers are rebuilt from the config, identically, so they are not copied each epoch),
the optimizer, the learning-rate schedule, the trainer's epoch and iteration counters and the random number
generators' states. With ``resume`` it loads that state when the trainer starts, so the run continues at the next
epoch; the file is removed once the training has completed (``models/model.pt`` is then the result).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from medad_monai.data.samplers import ResumableRandomSampler
from medad_monai.distributed import is_rank_zero
from medad_monai.io import atomic_torch_save, remove_stale_temporaries
from medad_monai.rng import rng_state, set_rng_state

__all__ = ["TrainingCheckpoint", "frozen_children", "trainable_state"]

logger = logging.getLogger("medad_monai")


def frozen_children(network: nn.Module) -> list[str]:
    """Names of the direct children that have parameters, none of them trainable (e.g. frozen teachers)."""
    names = []
    for name, child in network.named_children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            names.append(name)
    return names


def trainable_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """``network.state_dict()`` without the frozen children's entries."""
    frozen = tuple(f"{n}." for n in frozen_children(network))
    return {k: v for k, v in network.state_dict().items() if not k.startswith(frozen)}


class TrainingCheckpoint:
    """Per-epoch training state for ``--resume`` (attach it after the handlers that act at ``EPOCH_COMPLETED``).

    Args:
        save_dir: where the state file is written (the bundle's ``models`` folder).
        network, optimizer: the trained network and its optimizer.
        lr_scheduler: the learning-rate schedule stepped per epoch (``None``: none).
        resume: load the state file at the start and continue from its epoch; without a state file the training
            starts from scratch (with a WARNING).
        filename: the state file's name.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        resume: bool = False,
        filename: str = "training_state.pt",
    ) -> None:
        if not isinstance(resume, bool):
            raise ValueError(f"--resume must be true or false, got {resume!r}")
        self.path = Path(save_dir) / filename
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def start(self, engine: Engine) -> None:
        remove_stale_temporaries(self.path)
        if not self.resume:
            if self.path.is_file():
                logger.info(f"'{self.path}' holds an interrupted training; run with --resume True to continue it")
            return
        if not self.path.is_file():
            logger.warning(f"--resume: no training state at '{self.path}'; training starts from the beginning")
            return
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"--resume: cannot read training state '{self.path}': {type(e).__name__}: {e}") from e
        missing, unexpected = self.network.load_state_dict(state["network"], strict=False)
        frozen = tuple(f"{n}." for n in frozen_children(self.network))
        if unexpected or any(not k.startswith(frozen) for k in missing):
            raise RuntimeError(
                f"--resume: training state '{self.path}' does not fit the network (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}): was it written with other options?"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        engine.state.epoch, engine.state.iteration = int(state["epoch"]), int(state["iteration"])
        self._resume_data_order(engine)
        set_rng_state(state["rng"])
        logger.info(f"--resume: continuing after epoch {engine.state.epoch} from '{self.path}'")

    @staticmethod
    def _resume_data_order(engine: Engine) -> None:
        """Put a :class:`ResumableRandomSampler` where the interrupted run's data iterator stood; warn when the
        loader's order cannot be recreated and an epoch does not end with a pass over the data."""
        loader = engine.state.dataloader
        if loader is None or not hasattr(loader, "__len__"):
            return
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, ResumableRandomSampler) and getattr(loader, "batch_size", None):
            batches, iteration = len(loader), engine.state.iteration
            sampler.resume_at(iteration // batches, (iteration % batches) * loader.batch_size)
        elif engine.state.epoch_length != len(loader):
            logger.warning(
                f"--resume: epoch_length {engine.state.epoch_length} is not the data's {len(loader)} batches: an "
                "uninterrupted run continues one data iterator across epochs, this one starts a new one, so the "
                "result will differ from the uninterrupted run's (use medad_monai.data.samplers."
                "ResumableRandomSampler as the loader's sampler to avoid it)"
            )

    def save(self, engine: Engine) -> None:
        if not is_rank_zero():
            return
        state = {
            "network": trainable_state(self.network),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "rng": rng_state(),
        }
        atomic_torch_save(state, self.path)

    def finish(self, engine: Engine) -> None:
        if is_rank_zero():
            self.path.unlink(missing_ok=True)
