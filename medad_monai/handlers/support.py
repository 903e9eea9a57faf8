"""The D²4FAD support set as model state (Dong et al., ICLR 2026; official ``test.py::evaluation``).

:class:`SupportSetLoader` reads K normal images of the *target* dataset, chosen deterministically by seed, and
calls ``network.set_support(...)``: the support student features and learn-to-weight keys become buffers of the
network, so ``network(image)`` alone returns the anomaly map and ``model.pt``/TorchScript carry the support.

It also calibrates the decision threshold without test labels (docs/architecture.md, Contracts): the target has
only K normals at adaptation time, so the options are

* ``"holdout"``: score up to ``num_calibration`` further normals of the target's ``train/good`` that are not in
  the support set (when the target has more than K normals); falls back to ``"loo"`` when there are none;
* ``"loo"``: leave-one-out over the support set: each support image is scored against the other K-1 supports
  (the slot it leaves is filled by repeating the next support, so the model still sees K supports);
* ``"none"``: leave the threshold as it is.

The threshold is the ``quantile`` of those normal scores (image score = max of the map).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from medad_monai.data.foreground import body_extent, foreground_fraction
from medad_monai.data.support import calibration_holdout, select_support, support_datalist
from medad_monai.handlers.threshold import calibrate_threshold
from medad_monai.networks.body_extent import set_body_extent
from medad_monai.scores import image_score, score_reduction

__all__ = [
    "SupportSetLoader",
    "random_support_network",
]

logger = logging.getLogger("medad_monai")

CALIBRATION_MODES = ("holdout", "loo", "none")


def _load_images(
    items: Sequence[dict[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]], size: int
) -> torch.Tensor:
    """Preprocess ``items`` and stack them to ``(N, 3, size, size)``; a wrong shape names the file."""
    out = []
    for item in items:
        name = str(item["image"])
        image = torch.as_tensor(transform(dict(item))["image"]).as_subclass(torch.Tensor).float()
        if image.dim() != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != (size, size):
            raise ValueError(
                f"D24FAD support image '{name}' has shape {list(image.shape)} after preprocessing; expected "
                f"[3, {size}, {size}] (3 channels at the model's image_size)"
            )
        out.append(image)
    return torch.stack(out)


class SupportSetLoader:
    """Set a D²4FAD network's support set (and threshold) from K normal images of the target.

    Attach after the ``CheckpointLoader`` (handlers attached earlier run first on the same event), so the trained
    weights are in place when the support features are computed.

    Args:
        network: a :class:`~medad_monai.networks.d24fad.D24FAD`.
        support: target normals (see :func:`support_datalist`); ``None``, ``""`` or ``"none"`` keep the support
            stored in the model (e.g. from ``model.pt``) and only check that there is one (MONAI's command line
            drops ``None`` overrides, so ``--support_dir none`` is the command-line spelling).
        transform: preprocessing of an ``{"image": path}`` item (the bundle's ``preprocessing``).
        num_support: K (defaults to ``network.num_support``).
        seed: seed of the choice of the K images (and of the hold-out calibration images).
        calibration: ``"holdout"``, ``"loo"`` or ``"none"`` (module docstring).
        num_calibration: most hold-out normals to score for ``"holdout"``.
        quantile: quantile of the calibration scores that becomes ``network.threshold``.
        event: ``"STARTED"`` (evaluation/inference) or ``"COMPLETED"`` (end of training, before the model saver).
        batch_size: batch size of calibration scoring.
    """

    def __init__(
        self,
        network: nn.Module,
        support: str | os.PathLike | Sequence[Any] | None,
        transform: Callable[[dict[str, Any]], dict[str, Any]],
        num_support: int | None = None,
        seed: int = 0,
        calibration: str = "holdout",
        num_calibration: int = 16,
        quantile: float = 0.95,
        event: str = "STARTED",
        batch_size: int = 16,
    ) -> None:
        if calibration not in CALIBRATION_MODES:
            raise ValueError(f"calibration must be one of {CALIBRATION_MODES}, got {calibration!r}")
        if event not in ("STARTED", "COMPLETED"):
            raise ValueError(f"event must be 'STARTED' or 'COMPLETED', got {event!r}")
        self.network, self.support, self.transform = network, support, transform
        self.num_support = num_support
        self.seed, self.calibration, self.num_calibration = int(seed), calibration, int(num_calibration)
        self.quantile, self.event, self.batch_size = float(quantile), event, int(batch_size)
        self.support_files: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(getattr(Events, self.event), self)
        if self.event == "COMPLETED":  # set up after training: check the support images before training starts
            engine.add_event_handler(Events.STARTED, self.check)

    def check(self, engine: Engine | None = None) -> None:
        """Raise now, not after training, if the support source has fewer than K images (files are not read)."""
        if self.support is None or (isinstance(self.support, str) and self.support.strip().lower() in ("", "none")):
            return
        k = int(self.num_support or self.network.num_support)
        select_support(support_datalist(self.support), k, self.seed, str(self.support))

    def __call__(self, engine: Engine | None = None) -> None:
        self.apply()

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def _scores(self, images: torch.Tensor) -> np.ndarray:
        was_training = self.network.training
        reduction = score_reduction(self.network)
        self.network.eval()
        try:
            out = [
                image_score(self.network(images[i : i + self.batch_size].to(self._device())), reduction).cpu()
                for i in range(0, images.shape[0], self.batch_size)
            ]
        finally:
            self.network.train(was_training)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def _loo_scores(self, support: torch.Tensor) -> np.ndarray:
        k = support.shape[0]
        was_training = self.network.training
        self.network.eval()
        scores = []
        try:
            for j in range(k):
                others = [i for i in range(k) if i != j]
                idx = others + [others[0]]  # refill the left-out slot: the model expects K supports
                amap = self.network.forward_with_support(support[j : j + 1], support[idx])
                scores.append(float(image_score(amap, score_reduction(self.network))[0]))
        finally:
            self.network.train(was_training)
        return np.asarray(scores)

    def apply(self) -> None:
        """Read the support images, store them in the network and calibrate the threshold."""
        net = self.network
        if self.support is None or (isinstance(self.support, str) and self.support.strip().lower() in ("", "none")):
            if not bool(net.has_support):
                raise RuntimeError(
                    "D24FAD: the model has no stored support set and no support images were given: set "
                    "'support_dir' to a folder of K normal images of the target"
                )
            logger.info("D24FAD: using the support set stored in the model (K=%d)", net.num_support)
            return
        k = int(self.num_support or net.num_support)
        if k != net.num_support:
            raise ValueError(f"D24FAD support: num_support={k} but the model expects K={net.num_support}")
        source = str(self.support)[:200] if not isinstance(self.support, (list, tuple)) else "support list"
        chosen, rest = select_support(support_datalist(self.support), k, self.seed, source)
        self.support_files[:] = [str(it["image"]) for it in chosen]  # in place: configs hold this list
        images = _load_images(chosen, self.transform, net.image_size).to(self._device())
        net.set_support(images)
        logger.info(
            "D24FAD: support set of %d target normals (seed %d): %s",
            k,
            self.seed,
            ", ".join(Path(f).name for f in self.support_files),
        )
        mode = self.calibration
        if mode == "none":
            return
        fractions = foreground_fraction(images)
        if mode == "holdout" and not rest:
            logger.warning("D24FAD: no target normals beyond the support set: calibrating by leave-one-out instead")
            mode = "loo"
        if mode == "holdout":
            held = calibration_holdout(rest, self.num_calibration, self.seed, source)
            held_images = _load_images(held, self.transform, net.image_size)
            scores = self._scores(held_images)
            fractions = np.concatenate([fractions, foreground_fraction(held_images)])
            what = f"{len(held)} held-out target normals (not in the support set)"
        else:
            if k < 2:
                logger.warning("D24FAD: leave-one-out calibration needs K >= 2; threshold left uncalibrated")
                return
            scores = self._loo_scores(images)
            what = f"leave-one-out over the {k} support images"
        value = calibrate_threshold(net, np.asarray(scores), self.quantile)
        logger.info("D24FAD: threshold %.6g = %.3f quantile of the scores of %s", value, self.quantile, what)
        set_body_extent(net, body_extent(fractions))  # the support and calibration normals' body fractions


def random_support_network(seed: int = 0, **kwargs: Any) -> nn.Module:
    """A :class:`~medad_monai.networks.d24fad.D24FAD` with a random support set stored, for shape checks only
    (``monai.bundle.verify_net_in_out``, whose untrained network would otherwise have no support to compare to)."""
    from medad_monai.networks.d24fad import D24FAD

    net = D24FAD(**kwargs)
    g = torch.Generator().manual_seed(seed)
    net.set_support(torch.rand(net.num_support, 3, net.image_size, net.image_size, generator=g))
    return net
