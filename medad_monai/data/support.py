"""Which images of a D²4FAD target are its support set and which calibrate its threshold: the selection shared by
the bundle's :class:`~medad_monai.handlers.support.SupportSetLoader` and the comparison runner's data, so that the
baselines learn from exactly the same K images.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import Any

from medad_monai.data.datalists import folder_datalist, input_datalist, load_json_datalist
from medad_monai.data.demo import resolve_dataset_dir

__all__ = ["calibration_holdout", "select_support", "support_datalist"]


def support_datalist(support: str | os.PathLike | Sequence[Any]) -> list[dict[str, Any]]:
    """Candidate normal images of the target, sorted by path.

    Args:
        support: a dataset folder in the ``train/good`` layout (or ``demo:<domain>``): its ``train/good``; any
            other folder: every image under it; a JSON datalist: its ``"support"`` entries, else ``"training"``;
            or a list of paths / ``{"image": path}`` items.
    """
    if isinstance(support, (list, tuple)):
        items = [dict(s) if isinstance(s, dict) else {"image": str(s)} for s in support]
    else:
        path = resolve_dataset_dir(support)
        if path.is_file() and path.name.lower().endswith(".json"):
            items = load_json_datalist(path, "support", required=False) or load_json_datalist(path, "training")
        elif (path / "train" / "good").is_dir():
            items = folder_datalist(path, "train")
        else:
            items = input_datalist(path)
    return sorted(items, key=lambda it: str(it["image"]))


def select_support(
    items: Sequence[dict[str, Any]], num_support: int, seed: int = 0, source: str = "support"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pick ``num_support`` items deterministically (``random.Random(seed)``); returns ``(support, rest)``.

    Raises:
        ValueError: fewer than ``num_support`` candidates.
    """
    items = list(items)
    if len(items) < num_support:
        raise ValueError(
            f"D24FAD support: '{source}' has {len(items)} normal image(s), fewer than num_support={num_support}; "
            "provide at least K normal images of the target"
        )
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:num_support])
    support = [items[i] for i in order[:num_support]]
    rest = [it for i, it in enumerate(items) if i not in chosen]
    return support, rest


def calibration_holdout(
    rest: Sequence[dict[str, Any]], num_calibration: int, seed: int = 0, source: str = "support"
) -> list[dict[str, Any]]:
    """The target normals that calibrate the threshold (``calibration="holdout"``): at most ``num_calibration`` of
    the normals left after :func:`select_support` (drawn with ``seed + 1``, a draw independent of the support's)."""
    if len(rest) <= num_calibration:
        return list(rest)
    return select_support(rest, num_calibration, seed + 1, source)[0]
