"""Served bundles, loaded once and reloaded when their weights change (e.g. after ``/train``)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from medad_monai.inference import BundleLoadError, BundleModel, load_bundle_model

__all__ = ["ServedBundles", "bundle_has_model"]

logger = logging.getLogger("medad_monai")


def bundle_has_model(root: str | Path) -> bool:
    """Whether a bundle folder holds weights to serve (``models/model.pt`` or ``models/model.ts``)."""
    return any((Path(root) / "models" / n).is_file() for n in ("model.pt", "model.ts"))


def _stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    files = [root / "models" / n for n in ("model.pt", "model.ts")]
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


class ServedBundles:
    """Loaded :class:`~medad_monai.inference.BundleModel` per (bundle, device), shared by the infer tasks and the
    active-learning strategies of one app, and reloaded when the bundle's weight files change.

    Args:
        overrides: per bundle name, config overrides for :func:`~medad_monai.inference.load_bundle_model`.

    A model that already carries its set-up state (D²4FAD's support set) is served as trained; the bundle's set-up
    handlers (which read the support set named in ``inference.json``) run only for a model without it
    (``load_bundle_model(setup="auto")``).
    """

    def __init__(self, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.overrides = overrides or {}
        self._models: dict[tuple[str, str], tuple[tuple, BundleModel]] = {}
        self._lock = threading.Lock()

    def get(self, root: str | Path, device: str = "cpu") -> BundleModel:
        """The model of bundle ``root`` on ``device``. Raises :class:`BundleLoadError` naming the bundle."""
        root = Path(root).resolve()
        if not bundle_has_model(root):
            raise BundleLoadError(
                f"bundle '{root.name}' has no trained model ({root / 'models' / 'model.pt'}); train it first "
                f"(POST /train/{root.name}, or python -m monai.bundle run training --config_file "
                f"{root / 'configs' / 'train.json'})"
            )
        key, stamp = (str(root), str(device)), _stamp(root)
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            overrides = self.overrides.get(root.name, {})
            model = load_bundle_model(root, device=device, overrides=overrides, setup="auto")
            logger.info(f"serving bundle '{root.name}' model {model.model_version} on {device}")
            self._models[key] = (stamp, model)
            return model
