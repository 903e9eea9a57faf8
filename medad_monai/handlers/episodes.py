"""The trainer handler of D²4FAD's episodic training (:class:`~medad_monai.data.episodes.EpisodeDataset`)."""

from __future__ import annotations

from ignite.engine import Engine

from medad_monai.data.episodes import EpisodeDataset

__all__ = ["EpisodeResampler"]


class EpisodeResampler:
    """Trainer handler: tell an :class:`EpisodeDataset` the epoch at every ``EPOCH_STARTED`` (redraws supports when
    the dataset has ``resample=True``; harmless otherwise)."""

    def __init__(self, dataset: EpisodeDataset) -> None:
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        self.dataset.attach(engine)
