"""A progress bar for MONAI trainers and evaluators (Ignite's tqdm bar, showing the running loss)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from ignite.handlers import ProgressBar as _IgniteProgressBar

__all__ = ["ProgressBar"]


def _loss_of(output: Any) -> dict[str, float]:
    item = output[0] if isinstance(output, list) and output else output
    if isinstance(item, dict) and "loss" in item:
        loss = item["loss"]
        return {"loss": float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)}
    return {}


class ProgressBar:
    """Attachable like any MONAI handler (``handler.attach(engine)``); shows the loss when the output has one.

    Args:
        desc: label shown before the bar (e.g. ``"NDM"``).
        show_loss: display the current loss.
    """

    def __init__(self, desc: str = "", show_loss: bool = True, **tqdm_kwargs: Any) -> None:
        self.bar = _IgniteProgressBar(desc=desc, persist=False, **tqdm_kwargs)
        self.show_loss = show_loss

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=_loss_of if self.show_loss else None)
