"""Opt-in cache of the frozen teachers' features for one training run (PDD, D²4FAD)."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine, Events
from torch import nn

from medad_monai.networks.feature_cache import FeatureCache

__all__ = ["TeacherCache"]

logger = logging.getLogger("medad_monai")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class TeacherCache:
    """Give ``network`` a :class:`~medad_monai.networks.feature_cache.FeatureCache` when the trainer starts and take
    it away when it completes (a failed run's process ends; registering for exceptions here would change how the
    other handlers see them), so that epochs after the first read the teachers' features instead of
    recomputing them. Serving never sees it: only the networks' training paths (``PDD.training_outputs``,
    ``D24FAD.episode_outputs``) consult it.

    Args:
        network: a network with a ``teacher_cache`` attribute (PDD, D24FAD).
        enabled: attach the cache (configs: ``"@teacher_cache"``).
        dtype: storage type: ``"float32"`` (default: the features exactly as computed, so training is the same as
            without the cache), or ``"float16"``/``"bfloat16"`` (half the memory; the losses then differ by the
            rounding of the teacher features, and the training trajectory drifts from there).
        max_memory_mb: storage budget; images beyond it are computed every time.
    """

    def __init__(
        self, network: nn.Module, enabled: bool = True, dtype: str = "float32", max_memory_mb: float = 4096
    ) -> None:
        if not hasattr(network, "teacher_cache"):
            raise ValueError(f"{type(network).__name__} has no frozen teacher to cache (no 'teacher_cache' attribute)")
        if dtype not in _DTYPES:
            raise ValueError(f"teacher cache dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if max_memory_mb < 0:
            raise ValueError(f"max_memory_mb must be >= 0, got {max_memory_mb}")
        self.network, self.enabled = network, bool(enabled)
        self.dtype, self.max_bytes = _DTYPES[dtype], int(max_memory_mb * 2**20)
        self.cache: FeatureCache | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._log)
        engine.add_event_handler(Events.COMPLETED, self._stop)

    def _start(self, engine: Engine) -> None:
        self.cache = FeatureCache(dtype=self.dtype, max_bytes=self.max_bytes)
        self.network.teacher_cache = self.cache

    def _log(self, engine: Engine) -> None:
        if self.cache is not None:
            c = self.cache
            logger.info(
                f"teacher cache: {len(c)} images, {c.nbytes / 2**20:.0f} MB; {c.hits} hits, {c.misses} computed so far"
            )

    def _stop(self, engine: Engine) -> None:
        self.network.teacher_cache = None
        if self.cache is not None:
            self.cache.clear()
        self.cache = None
