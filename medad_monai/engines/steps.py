"""Glue that lets MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` drive methods that compute their own loss.

Multi-part methods (ensembles, teacher-student distillation, episodic few-shot training) do not fit the
``loss(network(image), label)`` pattern. Their networks expose a ``training_step(...) -> {"loss": ..., ...}``;
:class:`MethodInferer` calls it, :func:`output_loss` hands its ``"loss"`` to the trainer, and everything else
(optimisation, events, handlers, AMP, checkpointing) stays MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.utils import CommonKeys
from torch import nn

__all__ = ["MethodInferer", "PrepareBatchKeys", "output_loss"]


class MethodInferer(Inferer):
    """Call ``network.<method>(inputs)`` (or ``network.<method>(**inputs)`` for a dict of inputs).

    Args:
        method: name of the network method, e.g. ``"training_step"``, ``"refinement_step"``, ``"image_scores"``.
    """

    def __init__(self, method: str = "training_step") -> None:
        super().__init__()
        self.method = method

    def __call__(self, inputs: Any, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(network, self.method, None)
        if fn is None:
            raise AttributeError(f"{type(network).__name__} has no method {self.method!r}")
        if isinstance(inputs, dict):
            return fn(**inputs, **kwargs)
        return fn(inputs, *args, **kwargs)


def output_loss(pred: dict[str, torch.Tensor], target: Any = None) -> torch.Tensor:
    """The ``loss_function`` for :class:`MethodInferer` training: the step's own ``"loss"``."""
    return pred["loss"]


class PrepareBatchKeys(PrepareBatch):
    """Move ``keys`` of a batch to the device: one key gives a tensor, several a dict (passed as keyword args).

    The target is the batch ``label`` when present (unused by :func:`output_loss`).
    """

    def __init__(self, keys: str | Sequence[str] = "image", names: Sequence[str] | None = None) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.names = list(names) if names is not None else self.keys
        if len(self.names) != len(self.keys):
            raise ValueError("names must match keys one to one")

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        missing = [k for k in self.keys if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing} (has {sorted(batchdata)})")
        moved = {
            n: torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking, **kwargs)
            for k, n in zip(self.keys, self.names)
        }
        inputs = moved[self.names[0]] if len(self.keys) == 1 else moved
        target = batchdata.get(CommonKeys.LABEL)
        if isinstance(target, torch.Tensor):
            target = target.to(device=device, non_blocking=non_blocking)
        return inputs, target
