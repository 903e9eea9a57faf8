"""Which study to review next: "most anomalous first" and "nearest the threshold", over cached scores.

Scores are cached per (study path, its modification time and size, model version), in a JSON file written
atomically, so an active-learning request does not rescore every study. The model version is the content hash of
the served weights (:func:`~medad_monai.inference.bundle_model.file_version`): retraining the model (a new
``model.pt``) invalidates every cached score, editing a study invalidates that study's.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medad_monai.io import atomic_write_json

__all__ = [
    "ScoreCache",
    "StudyRanker",
    "most_anomalous",
    "nearest_threshold",
    "study_stamp",
]

logger = logging.getLogger("medad_monai")
CACHE_FORMAT = 1


def study_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """(mtime in ns, size in bytes) of a study file; for a folder (DICOM series): newest mtime and total size."""
    p = Path(path)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file()]
        stats = [f.stat() for f in files]
        return max((s.st_mtime_ns for s in stats), default=p.stat().st_mtime_ns), sum(s.st_size for s in stats)
    st = p.stat()
    return st.st_mtime_ns, st.st_size


def most_anomalous(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Studies by descending score (ties by path, so the order is reproducible); NaN scores last."""
    return sorted(scores.items(), key=lambda kv: (math.isnan(kv[1]), -kv[1] if not math.isnan(kv[1]) else 0, kv[0]))


def nearest_threshold(scores: dict[str, float], threshold: float | Mapping[str, float]) -> list[tuple[str, float]]:
    """Studies by ascending ``|score - threshold|``: the one the model is least sure of first. ``threshold`` is one
    value, or each study's own (a volume decided with the model's volume threshold, a 2D image with its image
    threshold; :func:`~medad_monai.inference.volume.served_threshold`).

    Raises ``ValueError`` when the threshold is NaN (an uncalibrated model has no decision boundary).
    """
    of = threshold if isinstance(threshold, Mapping) else dict.fromkeys(scores, float(threshold))
    if not all(math.isfinite(of.get(k, math.nan)) for k in scores):
        raise ValueError("nearest-threshold ranking needs a calibrated threshold; the model's is NaN")
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    return sorted(finite.items(), key=lambda kv: (abs(kv[1] - of[kv[0]]), kv[0]))


class ScoreCache:
    """Scores of studies for one model version, persisted as JSON.

    The file holds ``{"format": 1, "model_version": ..., "entries": {path: {"mtime_ns", "size", "score", ...}}}``.
    Opening it with another model version starts empty (the file is rewritten on the next :meth:`save`). An entry
    is a hit only if the study's current mtime and size match.

    Args:
        path: the JSON file (created on :meth:`save`).
        model_version: the version of the model that computes the scores.
    """

    def __init__(self, path: str | os.PathLike, model_version: str) -> None:
        self.path, self.model_version = Path(path), str(model_version)
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                logger.warning(f"score cache '{self.path}' unreadable ({e}); starting empty")
                data = {}
            if data.get("format") == CACHE_FORMAT and data.get("model_version") == self.model_version:
                self.entries = dict(data.get("entries", {}))
            elif data:
                self._dirty = True  # stale: another model version

    @staticmethod
    def key(path: str | os.PathLike) -> str:
        """Cache key of a study: its absolute path."""
        return str(Path(path).resolve())

    def get(self, path: str | os.PathLike) -> float | None:
        """The cached score of a study, or ``None`` (miss) if absent or the study changed since."""
        e = self.entries.get(self.key(path))
        try:
            stamp = study_stamp(path)
        except OSError:
            stamp = None
        if e is not None and stamp is not None and (e["mtime_ns"], e["size"]) == stamp:
            self.hits += 1
            return float(e["score"])
        self.misses += 1
        return None

    def put(self, path: str | os.PathLike, score: float, **extra: Any) -> None:
        """Store a study's score (and JSON-ready extras such as the decision) with its current stamp."""
        mtime_ns, size = study_stamp(path)
        self.entries[self.key(path)] = {"mtime_ns": mtime_ns, "size": size, "score": float(score), **extra}
        self._dirty = True

    def save(self) -> Path:
        """Write the cache atomically (only if something changed)."""
        if self._dirty or not self.path.exists():
            atomic_write_json(
                {"format": CACHE_FORMAT, "model_version": self.model_version, "entries": self.entries}, self.path
            )
            self._dirty = False
        return self.path


class StudyRanker:
    """Rank studies for review with a scoring function and a :class:`ScoreCache`.

    Args:
        score_fn: study path -> score (e.g. ``lambda p: score_volume(model, p).score``), or ``(score, threshold)``
            when studies are decided with thresholds of their own (a volume threshold beside the image one).
        cache_path: the cache JSON file.
        model_version: the scoring model's version (``BundleModel.model_version``).
        threshold: the decision threshold (``BundleModel.threshold``) for :meth:`nearest_threshold`, where
            ``score_fn`` gives none.

    Studies that cannot be scored are left out of the rankings and listed in :attr:`errors` (path -> message), so
    one unreadable study does not stop the others from being served.
    """

    def __init__(
        self,
        score_fn: Callable[[str], float | tuple[float, float]],
        cache_path: str | os.PathLike,
        model_version: str,
        threshold: float = float("nan"),
    ) -> None:
        self.score_fn, self.threshold = score_fn, float(threshold)
        self.cache = ScoreCache(cache_path, model_version)
        self.errors: dict[str, str] = {}
        self.thresholds: dict[str, float] = {}  # each scored study's decision threshold

    @classmethod
    def for_model(cls, model: Any, cache_path: str | os.PathLike, **score_kwargs: Any) -> StudyRanker:
        """A ranker scoring with a :class:`~medad_monai.inference.BundleModel` through ``score_volume``, each study
        ranked against the threshold it is decided with."""
        from medad_monai.inference.volume import score_volume

        def score(path: str) -> tuple[float, float]:
            result = score_volume(model, path, **score_kwargs)
            return result.score, result.threshold

        return cls(
            score,
            cache_path,
            model.model_version,
            threshold=model.threshold,
        )

    def scores(self, studies: Iterable[str | os.PathLike]) -> dict[str, float]:
        """Score of each study (cached when possible); the cache is saved once at the end."""
        out: dict[str, float] = {}
        for study in studies:
            path = str(study)
            cached = self.cache.get(path)
            if cached is not None:
                out[path] = cached
                self.thresholds[path] = float(self.cache.entries[self.cache.key(path)].get("threshold", self.threshold))
                continue
            try:
                scored = self.score_fn(path)
                score, threshold = map(float, scored if isinstance(scored, tuple) else (scored, self.threshold))
            except Exception as e:  # any reader/model error: report the study, keep serving the others
                self.errors[path] = f"{type(e).__name__}: {e}"
                logger.warning(f"cannot score study '{path}': {e}")
                continue
            self.errors.pop(path, None)
            self.cache.put(path, score, threshold=threshold)
            out[path] = score
            self.thresholds[path] = threshold
        self.cache.save()
        return out

    def most_anomalous(self, studies: Sequence[str | os.PathLike]) -> list[tuple[str, float]]:
        """Studies by descending score."""
        return most_anomalous(self.scores(studies))

    def nearest_threshold(self, studies: Sequence[str | os.PathLike]) -> list[tuple[str, float]]:
        """Studies by closeness of their score to the threshold each is decided with."""
        scores = self.scores(studies)
        return nearest_threshold(scores, {k: self.thresholds.get(k, self.threshold) for k in scores})

    def next_study(self, studies: Sequence[str | os.PathLike], strategy: str = "most_anomalous") -> str | None:
        """The study to review next by ``strategy`` (``most_anomalous`` or ``nearest_threshold``); None if none."""
        if strategy == "most_anomalous":
            ranked = self.most_anomalous(studies)
        elif strategy == "nearest_threshold":
            ranked = self.nearest_threshold(studies)
        else:
            raise ValueError(f"strategy must be 'most_anomalous' or 'nearest_threshold', got {strategy!r}")
        return ranked[0][0] if ranked else None
