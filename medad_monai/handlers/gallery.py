"""The evaluation's error gallery: the normals the model scores highest and the anomalous images it scores lowest,
with their anomaly-map overlays, written at completion (read by the HTML report, ``medad-monai report``)."""

from __future__ import annotations

import heapq
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from PIL import Image
from torch import nn

from medad_monai.io import atomic_savefig, atomic_write_json, file_stem
from medad_monai.scores import image_score, score_reduction
from medad_monai.transforms import image_source
from medad_monai.visualize import overlay_rgb

__all__ = ["GALLERY_KINDS", "ErrorGallery"]

logger = logging.getLogger("medad_monai")

# in the order the report shows them: the errors first, then the closest calls on the right side of the threshold
GALLERY_KINDS = ("false_positive", "hardest_normal", "false_negative", "hardest_anomalous")

# a PNG this handler wrote: ``<kind>_<rank>_<stem>.png`` (only these are removed when a new gallery replaces one)
_OWN_PNG = re.compile(r"^(" + "|".join(GALLERY_KINDS) + r")_\d+_.*\.png$")


@dataclass
class _Kept:
    """One kept image: where it came from, its label and score, its first channel and its map (both ``(H, W)``)."""

    file: str
    label: int
    score: float
    image: np.ndarray
    amap: np.ndarray


class ErrorGallery:
    """Keep, over an evaluation epoch, the ``k`` normal images with the highest scores and the ``k`` anomalous images
    with the lowest, and write them as overlays into ``output_dir/<folder>/`` with ``gallery.json``.

    The score is the one the model decides on: :func:`~medad_monai.scores.image_score` of its map (``forward``, the
    map it serves) with the reduction it states, compared with its ``threshold`` buffer (read at completion, after
    the checkpoint loaded it). A kept normal above the threshold is a ``false_positive``, otherwise only a
    ``hardest_normal``; a kept anomalous image at or below it is a ``false_negative``, otherwise a
    ``hardest_anomalous`` (an uncalibrated model, threshold NaN, decides nothing: no errors, only the hardest).

    Memory is bounded: two heaps of at most ``k`` images and maps each, whatever the size of the test set. The map
    is read from the output under ``map_key`` (PDD, D²4FAD: the bundle's ``pred``; DDAD: ``map``, the served map
    beside every map's score); where the output holds no map, the network (in eval mode) is run on the batch's
    images.

    Each kept image gets one PNG: the image (its first channel, min-max scaled) and beside it the map over it
    (:func:`~medad_monai.visualize.overlay_rgb`) on one colour scale for the whole gallery (0 to the largest value
    among the kept maps), so that maps compare across false positives and false negatives. ``gallery.json`` lists
    ``{"kind", "file", "label", "score", "threshold", "png", "rank", "reduction", "colour_max"}`` per image, the
    false positives by decreasing score, the false negatives by increasing score (the most confident errors first).

    Args:
        output_dir: the evaluation's output folder; the gallery goes into ``output_dir/<folder>``.
        network: the evaluated model (its ``score_reduction``, ``threshold`` and, without maps in the output, its
            ``forward``).
        k: images kept per side (normals, anomalous images).
        map_key: decollated output key of the anomaly map ``(1, H, W)``, or several to try in turn (the first that
            holds a map is read).
        image_key: key of the input image (its metadata names the file).
        label_key: key of the 0/1 image label.
        folder: name of the gallery folder.
        alpha: opacity of the map over the image.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: nn.Module,
        k: int = 6,
        map_key: str | Sequence[str] = ("pred", "map"),
        image_key: str = "image",
        label_key: str = "label",
        folder: str = "gallery",
        alpha: float = 0.5,
    ) -> None:
        if int(k) < 1:
            raise ValueError(f"ErrorGallery keeps k >= 1 images per side, got k={k}")
        self.output_dir, self.network, self.k = Path(output_dir), network, int(k)
        self.map_keys = [map_key] if isinstance(map_key, str) else list(map_key)
        self.image_key, self.label_key = image_key, label_key
        self.folder, self.alpha = folder, float(alpha)
        # min-heaps of (key, -order, order): the root is the first to drop out; the order breaks ties (the earlier
        # image stays) and names the entry in ``_kept``
        self._normals: list[tuple[float, int, int]] = []
        self._anomalous: list[tuple[float, int, int]] = []
        self._kept: dict[int, _Kept] = {}
        self._seen = 0
        self._skipped = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._normals, self._anomalous, self._kept = [], [], {}
        self._seen, self._skipped = 0, 0

    @property
    def kept(self) -> int:
        """How many images the heaps hold now (at most ``2 * k``)."""
        return len(self._kept)

    def _collect(self, engine: Engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        outputs, inputs = (out, batch) if isinstance(out, list) else ([out], [batch])
        items = []
        for item, data in zip(outputs, inputs):
            # SupervisedEvaluator's output carries the image and label; MONAI's postprocessing may leave them only
            # in the decollated batch
            image = item.get(self.image_key, data.get(self.image_key) if isinstance(data, dict) else None)
            label = item.get(self.label_key, data.get(self.label_key) if isinstance(data, dict) else None)
            if image is None or label is None:
                raise KeyError(
                    f"ErrorGallery needs '{self.image_key}' and '{self.label_key}' in the evaluator's output"
                )
            amap = next((item[k] for k in self.map_keys if _is_map(item.get(k))), None)
            items.append((image, int(torch.as_tensor(label).reshape(-1)[0]), amap))
        maps = self._maps(items)
        reduction = score_reduction(self.network)
        for (image, label, _), amap in zip(items, maps):
            score = float(image_score(amap[None].float(), reduction)[0])
            self._offer(image, label, score, amap)

    def _maps(self, items: list[tuple[Any, int, Any]]) -> list[torch.Tensor]:
        """Each item's map ``(1, H, W)``: from the output, or (none there) the network's ``forward`` on its image."""
        maps = {i: torch.as_tensor(amap) for i, (_, _, amap) in enumerate(items) if _is_map(amap)}
        missing = [i for i in range(len(items)) if i not in maps]
        if missing:  # one forward pass for the batch's images without a map
            # MONAI's evaluator leaves the network in the mode it found it in (often training) once the iteration
            # is over: without eval mode, batch normalisation would use this batch's statistics, another map
            training = self.network.training
            try:
                self.network.eval()
                with torch.no_grad():
                    computed = self.network(torch.stack([torch.as_tensor(items[i][0]) for i in missing]))
            finally:
                self.network.train(training)
            maps.update(zip(missing, computed))
        return [maps[i].detach().reshape(-1, *maps[i].shape[-2:])[:1].cpu() for i in range(len(items))]

    def _offer(self, image: Any, label: int, score: float, amap: torch.Tensor) -> None:
        """Keep the image if it is among the ``k`` highest-scored normals or ``k`` lowest-scored anomalous images."""
        self._seen += 1
        if label not in (0, 1) or not math.isfinite(score):
            self._skipped += 1  # no class, or a score that ranks nowhere
            return
        heap, key = (self._normals, score) if label == 0 else (self._anomalous, -score)
        order = self._seen
        if len(heap) >= self.k and key <= heap[0][0]:
            return
        img = torch.as_tensor(image).detach().float().cpu()
        img = img.reshape(-1, *img.shape[-2:])[0]
        if amap.shape[-2:] != img.shape[-2:]:  # a map at another size than its input: drawn at the input's size
            size = tuple(img.shape[-2:])
            amap = F.interpolate(amap[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        kept = _Kept(image_source(image), label, score, img.numpy().copy(), amap[0].float().numpy().copy())
        if len(heap) < self.k:
            heapq.heappush(heap, (key, -order, order))
        else:
            _, _, dropped = heapq.heapreplace(heap, (key, -order, order))
            del self._kept[dropped]
        self._kept[order] = kept

    def _write(self, engine: Engine) -> None:
        folder = self.output_dir / self.folder
        folder.mkdir(parents=True, exist_ok=True)
        threshold = float(self.network.threshold) if hasattr(self.network, "threshold") else float("nan")
        reduction = score_reduction(self.network)
        normals = sorted((self._kept[o] for _, _, o in self._normals), key=lambda e: -e.score)
        anomalous = sorted((self._kept[o] for _, _, o in self._anomalous), key=lambda e: e.score)
        groups = {
            "false_positive": [e for e in normals if e.score > threshold],
            "hardest_normal": [e for e in normals if not e.score > threshold],
            "false_negative": [e for e in anomalous if e.score <= threshold],
            "hardest_anomalous": [e for e in anomalous if not e.score <= threshold],
        }
        colour_max = max((float(e.amap.max()) for e in self._kept.values()), default=0.0)
        records: list[dict[str, Any]] = []
        for kind in GALLERY_KINDS:
            for rank, entry in enumerate(groups[kind], start=1):
                name = f"{kind}_{rank:02d}_{_safe(file_stem(entry.file))}.png"
                _write_panel(entry, folder / name, colour_max, self.alpha)
                records.append(
                    {
                        "kind": kind,
                        "rank": rank,
                        "file": entry.file,
                        "label": entry.label,
                        "score": entry.score,
                        "threshold": threshold,
                        "reduction": reduction,
                        "colour_max": colour_max,
                        "png": name,
                    }
                )
        atomic_write_json(records, folder / "gallery.json")
        # an earlier run's overlays that this gallery does not list would be mistaken for its own
        listed = {r["png"] for r in records}
        for old in folder.glob("*.png"):
            if _OWN_PNG.match(old.name) and old.name not in listed:
                old.unlink(missing_ok=True)
        counts = ", ".join(f"{len(groups[kind])} {kind.replace('_', ' ')}" for kind in GALLERY_KINDS)
        logger.info(f"error gallery in {folder}: {counts} (threshold {threshold:.6g}; {self._seen} images seen)")


def _is_map(value: Any) -> bool:
    """Whether an output value is an anomaly map (at least two spatial dimensions), not a score or absent."""
    return isinstance(value, torch.Tensor | np.ndarray) and value.ndim >= 2


def _safe(stem: str) -> str:
    """A file stem reduced to characters that are safe in a file name and a URL (at most 60 of them)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60] or "image"


def _write_panel(entry: _Kept, path: Path, colour_max: float, alpha: float) -> Path:
    """The image alone and the map over it, side by side, enlarged by whole pixels to at least 160 px high."""
    gray = entry.image.astype(np.float64)
    gray = (gray - gray.min()) / (np.ptp(gray) or 1.0)
    left = np.repeat((gray * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    right = overlay_rgb(entry.image, entry.amap, alpha=alpha, vmax=colour_max)
    gap = np.full((left.shape[0], max(2, left.shape[1] // 32), 3), 255, dtype=np.uint8)
    panel = np.concatenate([left, gap, right], axis=1)
    factor = max(1, math.ceil(160 / panel.shape[0]))
    panel = np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1)
    return atomic_savefig(lambda p: Image.fromarray(panel).save(p, format="PNG"), path)
