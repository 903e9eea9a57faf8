"""Inference over a folder that survives unreadable files: they are skipped and reported, never fatal.

A map-style dataset cannot skip an item (the loader asks for every index), so :class:`TolerantDataset` is an
iterable one: it yields the items whose transform succeeded and records the others in a :class:`FailureLog`. The
log is a JSON-lines file, so loader worker processes can append to it and the parent reads it back at the end of
the run (:class:`~medad_monai.handlers.run_outputs.RunOutputs` turns it into rows of ``scores.csv``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import apply_transform
from torch.utils.data import IterableDataset, get_worker_info

from medad_monai.errors import describe_error

__all__ = ["FailureLog", "TolerantDataset"]

logger = logging.getLogger("medad_monai")


class FailureLog:
    """The inputs a run could not process, one JSON line each (``{"image": ..., "error": ...}``).

    Args:
        path: the JSON-lines file (its folder is created on the first failure).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def add(self, image: str, error: str) -> None:
        """Record one failure (one short ``write`` in append mode, so concurrent workers do not interleave)."""
        logger.error(f"cannot process '{image}': {error}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"image": image, "error": error}) + "\n")

    def entries(self) -> list[dict[str, str]]:
        """The failures recorded so far, in the order they were written."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def __len__(self) -> int:
        return len(self.entries())


class TolerantDataset(IterableDataset):
    """Yields ``transform(item)`` for every item of ``data`` whose transform succeeds; records the others.

    With several loader workers each takes every ``num_workers``-th item, so every item is tried once.

    Args:
        data: the datalist (dicts with ``image_key``).
        transform: the preprocessing (e.g. a ``Compose``); ``None`` yields the items unchanged.
        failures: where failed items go; ``None`` only logs them.
        image_key: the key naming the input file in the report.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable[[dict[str, Any]], Any] | None = None,
        failures: FailureLog | None = None,
        image_key: str = "image",
    ) -> None:
        self.data, self.transform, self.failures, self.image_key = list(data), transform, failures, image_key

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(start, len(self.data), step):
            item = self.data[index]
            try:
                out = apply_transform(self.transform, item) if self.transform is not None else item
            except Exception as error:  # noqa: BLE001 - any failure of one input is that input's, reported below
                source = str(item.get(self.image_key, index)) if isinstance(item, dict) else str(index)
                reason = describe_error(error)
                if self.failures is not None:
                    self.failures.add(source, reason)
                else:
                    logger.error(f"cannot process '{source}': {reason}")
                continue
            yield out
