"""Which anomalib baseline runs are the same run: a digest of everything that determines a baseline's record.

Two comparisons fit the same RD or PatchCore when their baselines see the same training, calibration and test
items (:func:`~medad_monai.comparison.data.comparison_data`, read from each bundle's config: DDAD and PDD on the
same demo domain and seed share them), the same preprocessing and image size, threshold quantile and the same
settings (teacher weights, RD epochs, batch size, coreset ratio, seed, device, threads, timing repeats, anomalib
version). :func:`baseline_key` hashes exactly that, so ``medad-monai benchmark`` fits each baseline once and
reuses its record wherever the key matches. The bundle, its name and overrides that do not change the data
(e.g. D²4FAD's sources) are not part of the key.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medad_monai.comparison.data import baseline_preprocessing, bundle_parser, comparison_data
from medad_monai.comparison.runner import anomalib_version

__all__ = ["BASELINE_SETTINGS", "baseline_key", "baseline_key_material", "stable_description"]

# spec entries that shape a baseline's record (besides the data and the preprocessing)
BASELINE_SETTINGS: tuple[str, ...] = (
    "teacher_weights",
    "rd_epochs",
    "batch_size",
    "coreset_sampling_ratio",
    "seed",
    "device",
    "threads",
    "timing_repeats",
    "feature_cache",
)


def stable_description(obj: Any, depth: int = 3) -> Any:
    """A JSON-able description of ``obj`` that is the same in every process (``repr`` of a MONAI transform holds its
    memory address): primitives as they are, containers element-wise, classes and functions by qualified name,
    other objects as their class and public attributes (``depth`` levels down, then the class alone)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, (torch.dtype, np.dtype, Path)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [stable_description(v, depth) for v in obj]
    if isinstance(obj, dict):
        return {str(k): stable_description(v, depth) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, type) or inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    attributes = getattr(obj, "__dict__", None)
    if depth <= 0 or not attributes:
        return name
    public = {k: v for k, v in attributes.items() if not k.startswith("__")}
    return {"class": name, **{k: stable_description(v, depth - 1) for k, v in sorted(public.items())}}


def baseline_key_material(spec: dict[str, Any]) -> dict[str, Any]:
    """What determines the baselines' records of the comparison ``spec``
    (:func:`~medad_monai.comparison.runner.comparison_spec`); lists the bundle's data, trains nothing."""
    data = comparison_data(bundle_parser(Path(spec["configs"]), spec["overrides"]))
    return {
        "train": data.train,
        "calibration": data.calibration,
        "test": data.test,
        "image_size": data.image_size,
        "threshold_quantile": data.quantile,
        "preprocessing": stable_description(
            baseline_preprocessing(data.image_size, data.intensity_policy, data.intensity_range).transforms
        ),
        "anomalib": anomalib_version(),
        **{key: spec.get(key) for key in BASELINE_SETTINGS},
    }


def baseline_key(material: dict[str, Any]) -> str:
    """Short hex digest (16 characters) of :func:`baseline_key_material`'s ``material``."""
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
