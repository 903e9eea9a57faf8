"""Glue that lets MONAI's ``SupervisedTrainer``/``SupervisedEvaluator`` drive multi-part methods.

Ensembles, teacher-student distillation and episodic few-shot training do not fit ``loss(network(image), label)``
with one ``forward``: their networks expose what a training step computes as a method returning a dict of
tensors (``training_outputs``, ``episode_outputs``, ``refinement_outputs``), :class:`MethodInferer` calls it,
and the method's loss module (``medad_monai.losses``, declared as ``"loss"`` in the bundle's ``train.json``) is the
trainer's ``loss_function``; everything else (optimisation, events, handlers, AMP, checkpointing) stays MONAI's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.utils import CommonKeys
from torch import nn

__all__ = ["MethodInferer", "PrepareBatchKeys"]


class MethodInferer(Inferer):
    """Call ``network.<method>(inputs)`` (or ``network.<method>(**inputs)`` for a dict of inputs).

    Args:
        method: name of the network method, e.g. ``"training_outputs"``, ``"refinement_outputs"``, ``"image_scores"``.
    """

    def __init__(self, method: str = "training_outputs") -> None:
        super().__init__()
        self.method = method

    def __call__(self, inputs: Any, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(network, self.method, None)
        if fn is None:
            raise AttributeError(f"{type(network).__name__} has no method {self.method!r}")
        if isinstance(inputs, dict):
            return fn(**inputs, **kwargs)
        return fn(inputs, *args, **kwargs)


class PrepareBatchKeys(PrepareBatch):
    """Move ``keys`` of a batch to the device: one key gives a tensor, several a dict (passed as keyword args).

    The target (the loss function's second argument) is the batch's ``target_key`` entry when present (default
    ``label``), e.g. ``"mask"`` for DDAD's refinement stage.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        names: Sequence[str] | None = None,
        target_key: str = CommonKeys.LABEL,
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.names = list(names) if names is not None else self.keys
        self.target_key = target_key
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
        target = batchdata.get(self.target_key)
        if isinstance(target, torch.Tensor):
            target = torch.as_tensor(target).to(device=device, non_blocking=non_blocking, **kwargs)
        return inputs, target
