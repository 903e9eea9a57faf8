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

__all__ = ["AMP_DTYPES", "MethodInferer", "PrepareBatchKeys", "to_channels_last", "to_float32"]

# autocast dtypes a config may name; bfloat16 needs no gradient scaler (float16 training would: MONAI's ``amp``)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def to_float32(outputs: Any) -> Any:
    """``outputs`` (a tensor, or dicts, lists and tuples of them) with reduced-precision floats cast to float32, so
    that losses, scores and thresholds are computed in float32 whatever the forward ran in."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.dtype in (torch.bfloat16, torch.float16) else outputs
    if isinstance(outputs, dict):
        return {k: to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(v) for v in outputs)
    return outputs


def _device_type(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return inputs.device.type
    if isinstance(inputs, dict):
        return next((v.device.type for v in inputs.values() if isinstance(v, torch.Tensor)), "cpu")
    return "cpu"


def to_channels_last(value: Any) -> Any:
    """``value`` with its 4-D tensors (also inside dicts, lists and tuples) in channels-last memory format; the values
    are the same, only their layout in memory changes."""
    if isinstance(value, torch.Tensor):
        return value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value
    if isinstance(value, dict):
        return {k: to_channels_last(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_channels_last(v) for v in value)
    return value


def _is_channels_last(network: nn.Module) -> bool:
    """Whether the network's 4-D parameters (convolution weights) are all in channels-last format already."""
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in network.parameters() if p.dim() == 4)


class MethodInferer(Inferer):
    """Call ``network.<method>(inputs)`` (or ``network.<method>(**inputs)`` for a dict of inputs), optionally under
    automatic mixed precision and in channels-last memory format.

    Args:
        method: name of the network method, e.g. ``"training_outputs"``, ``"refinement_outputs"``, ``"forward"``.
        amp: run the method under ``torch.autocast`` on the inputs' device (CPU or CUDA) with ``amp_dtype``; the
            outputs come back in float32. MONAI's own ``amp`` switch of its engines autocasts on CUDA only (and adds
            a float16 gradient scaler), so the bundles' ``amp`` key drives this one, on every device.
        amp_dtype: ``"bfloat16"`` (default: float32's range, no scaler needed) or ``"float16"`` (inference).
        channels_last: convert the network (its parameters, in place, on the first call, before an optimiser has
            allocated state for them) and every 4-D input to channels-last memory format, which cuDNN's
            tensor-core convolutions prefer under AMP; the values are unchanged. On CPU it was measured slower
            (docs/user_guide.md, "Mixed precision"), hence off by default.
    """

    def __init__(
        self,
        method: str = "training_outputs",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got {amp_dtype!r}")
        self.method = method
        self.amp = bool(amp)
        self.amp_dtype = amp_dtype
        self.channels_last = bool(channels_last)

    def __call__(self, inputs: Any, network: nn.Module, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(network, self.method, None)
        if fn is None:
            raise AttributeError(f"{type(network).__name__} has no method {self.method!r}")
        if self.channels_last:
            if not _is_channels_last(network):
                network.to(memory_format=torch.channels_last)
            inputs = to_channels_last(inputs)
        if not self.amp:
            return fn(**inputs, **kwargs) if isinstance(inputs, dict) else fn(inputs, *args, **kwargs)
        with torch.autocast(device_type=_device_type(inputs), dtype=AMP_DTYPES[self.amp_dtype]):
            out = fn(**inputs, **kwargs) if isinstance(inputs, dict) else fn(inputs, *args, **kwargs)
        return to_float32(out)


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
