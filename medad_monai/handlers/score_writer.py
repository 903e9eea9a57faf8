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

from medad_monai.io import atomic_write_text
from medad_monai.transforms import source_name

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
    """

    def __init__(self, output_file: str | os.PathLike, keys: Sequence[str] = ("score",), image_key: str = "image"):
        self.output_file, self.keys, self.image_key = output_file, list(keys), image_key
        self.rows: list[list[Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            self.rows.append([source_name(item.get(self.image_key))] + [_scalar(item.get(k, "")) for k in self.keys])

    def _write(self, engine: Engine) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["filename", *self.keys])
        writer.writerows(self.rows)
        atomic_write_text(buf.getvalue(), self.output_file)
        logging.getLogger("medad_monai").info(f"wrote {len(self.rows)} image scores to {self.output_file}")
