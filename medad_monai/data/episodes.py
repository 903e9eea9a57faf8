"""Episodic few-shot data for D²4FAD's leave-one-dataset-out training (Dong et al., ICLR 2026, §3; official
``main.py::train`` with ``FSAD_Dataset_train(..., shot=K)``).

Each item is one *episode*: a query normal image of a source dataset ``d`` and ``K`` support images, other normal
images of the same dataset ``d`` (never the query itself). Batches collate (PyTorch's default collate) to

* ``query``: ``(B, 3, H, W)``;
* ``support``: ``(B, K, 3, H, W)``;

which ``PrepareBatchKeys(["query", "support"])`` and ``MethodInferer("episode_outputs")`` hand to
:meth:`medad_monai.networks.d24fad.D24FAD.episode_outputs` inside a MONAI ``SupervisedTrainer``.

Supports are either drawn once for the whole run (``resample=False``, the official behaviour: the official dataset
draws each query's supports when it is built) or redrawn every epoch (``resample=True``; attach the dataset to the
trainer through :class:`~medad_monai.handlers.episodes.EpisodeResampler` so that it learns the epoch number). Both
are deterministic given ``seed``."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset
from torch.utils.data import Dataset

from medad_monai.data.datalists import folder_datalist

__all__ = ["EpisodeDataset", "dataset_name"]

logger = logging.getLogger("medad_monai")


def dataset_name(source: str | os.PathLike) -> str:
    """A short name of a source dataset: ``demo:head_ct`` -> ``head_ct``, ``/data/RSNA/`` -> ``RSNA``."""
    text = str(source).rstrip("/\\")
    if text.startswith("demo:"):
        return text[len("demo:") :].split("/")[0]
    return os.path.basename(text) or text


class EpisodeDataset(Dataset):
    """Episodes over several source datasets (folders in the ``train/good`` layout, or ``demo:<domain>``).

    Every normal training image of every source is the query of one episode per epoch; its ``num_support``
    supports come from the same source.

    Args:
        sources: source datasets; their ``train/good`` images are the normals.
        transform: preprocessing of one ``{"image": path}`` item to a ``(3, H, W)`` tensor under ``"image"``
            (LoadAnomalyImaged, ChannelPolicyd(3), Resized, ScaleIntensityd to [0, 1] in the bundle). Results
            are cached in memory (``CacheDataset``), as the demo data and the paper's datasets are small.
        num_support: K, supports per query (2, 4 or 8 in the paper).
        resample: redraw the supports every epoch (``True``) or keep one draw for the whole run (``False``,
            official behaviour).
        seed: seed of the support draws.
        num_workers: workers of the in-memory cache.
        items: optional ready datalists, one list per source (replaces reading ``train/good``; for tests and
            JSON datalists).
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        num_support: int = 4,
        resample: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        items: Sequence[Sequence[dict[str, Any]]] | None = None,
    ) -> None:
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if not sources:
            raise ValueError("EpisodeDataset: at least one source dataset is needed")
        if num_support < 1:
            raise ValueError(f"EpisodeDataset: num_support must be >= 1, got {num_support}")
        self.sources = [str(s) for s in sources]
        self.names = [dataset_name(s) for s in self.sources]
        self.num_support = int(num_support)
        self.resample = bool(resample)
        self.seed = int(seed)
        self.epoch = 0
        per_source = list(items) if items is not None else [folder_datalist(s, "train") for s in self.sources]
        if len(per_source) != len(self.sources):
            raise ValueError("EpisodeDataset: items must hold one datalist per source")
        flat: list[dict[str, Any]] = []
        self.groups: list[list[int]] = []  # indices into the flat image list, per source
        for src, lst in zip(self.sources, per_source):
            if len(lst) < self.num_support + 1:
                raise ValueError(
                    f"EpisodeDataset: source '{src}' has {len(lst)} normal training images; an episode needs a "
                    f"query and {self.num_support} other images (num_support), i.e. at least {self.num_support + 1}"
                )
            self.groups.append(list(range(len(flat), len(flat) + len(lst))))
            flat.extend(dict(it) for it in lst)
        self.group_of = [g for g, idx in enumerate(self.groups) for _ in idx]
        self.images = CacheDataset(flat, transform=transform, cache_rate=1.0, num_workers=num_workers, progress=False)
        self._supports = self._draw(0)
        logger.info(
            "episodes: %d queries from %s, K=%d supports each (%s)",
            len(flat),
            ", ".join(f"{n} ({len(g)})" for n, g in zip(self.names, self.groups)),
            self.num_support,
            "redrawn every epoch" if self.resample else "fixed for the run",
        )

    def _draw(self, epoch: int) -> list[list[int]]:
        """Support indices of every query for ``epoch``: K distinct images of the query's source, query excluded."""
        rng = random.Random(f"{self.seed}-{epoch}")
        out = []
        for q, g in enumerate(self.group_of):
            candidates = [i for i in self.groups[g] if i != q]
            out.append(rng.sample(candidates, self.num_support))
        return out

    def set_epoch(self, epoch: int) -> None:
        """Use the support draw of ``epoch`` (0-based) when ``resample``; no effect otherwise."""
        self.epoch = int(epoch)
        if self.resample:
            self._supports = self._draw(self.epoch)

    def attach(self, engine: Engine) -> None:
        """Handler interface: redraw the supports at the start of every epoch of ``engine`` (when ``resample``)."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.set_epoch(e.state.epoch - 1))

    def support_indices(self, index: int) -> list[int]:
        """The flat image indices of the supports of query ``index`` in the current draw."""
        return list(self._supports[index])

    def __len__(self) -> int:
        return len(self.group_of)

    def _image(self, index: int) -> torch.Tensor:
        return torch.as_tensor(self.images[index]["image"]).as_subclass(torch.Tensor).float()

    def __getitem__(self, index: int) -> dict[str, Any]:
        support_idx = self._supports[index]
        return {
            "query": self._image(index),
            "support": torch.stack([self._image(i) for i in support_idx]),
            "source": self.names[self.group_of[index]],
            "query_index": index,
            "support_index": torch.as_tensor(support_idx),
        }
