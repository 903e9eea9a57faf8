"""Write per-image scores and decisions to CSV (atomically, when the run completes)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from medad_monai.data.tolerant import FailureLog
from medad_monai.io import atomic_write_text
from medad_monai.transforms import image_source

__all__ = ["ImageScoreWriter"]


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().reshape(-1)[0]) if value.numel() else ""
    return value


class ImageScoreWriter:
    """One CSV row per image: the source file, then ``keys`` (scores, label, threshold, decision...).

    Keys missing from an item are left empty. Rows are collected from the decollated engine output and the file
    is written once at the end, atomically.

    Args:
        output_file: CSV path.
        keys: output keys to write as columns.
        image_key: key whose metadata names the source file.
        failures: the inputs the run could not process (:class:`~medad_monai.data.tolerant.FailureLog`); when
            given, an ``error`` column is added and each failed input gets a row with its reason.
    """

    def __init__(
        self,
        output_file: str | os.PathLike,
        keys: Sequence[str] = ("score",),
        image_key: str = "image",
        failures: FailureLog | None = None,
    ) -> None:
        self.output_file, self.keys, self.image_key = output_file, list(keys), image_key
        self.failures = failures
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        extra = [""] if self.failures is not None else []
        for item in out if isinstance(out, list) else [out]:
            row = [image_source(item.get(self.image_key))] + [_scalar(item.get(k, "")) for k in self.keys]
            self.rows.append(row + extra)

    def _write(self, engine: Engine) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        failed = self.failures.entries() if self.failures is not None else []
        writer.writerow(["filename", *self.keys] + (["error"] if self.failures is not None else []))
        writer.writerows(self.rows)
        writer.writerows([f["image"]] + [""] * len(self.keys) + [f["error"]] for f in failed)
        atomic_write_text(buf.getvalue(), self.output_file)
        logging.getLogger("medad_monai").info(
            f"wrote {len(self.rows)} image scores ({len(failed)} failed inputs) to {self.output_file}"
        )
