"""Architecture options recorded in the weights, so a checkpoint never loads into a network built with other options.

A state dict only knows tensor names and shapes: loading a 3-member DDAD checkpoint into a 2-member config fails with
a list of unexpected keys, and a PDD checkpoint trained with one ``fusion`` loads silently into the other and serves
wrong maps. Each network records the options that define what it computes as a ``uint8`` buffer holding their JSON
(:func:`record_architecture`; it travels in ``model.pt`` and the TorchScript export), and checks a checkpoint's
record before loading it (:func:`check_architecture`, called from the network's ``_load_from_state_dict``): a
difference is an :class:`ArchitectureMismatchError` that names each option, the checkpoint's value and the
command-line override that loads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["RECORD_KEY", "ArchitectureMismatchError", "check_architecture", "read_record", "record_architecture"]

RECORD_KEY = "architecture"


class ArchitectureMismatchError(ValueError):
    """A checkpoint was trained with other architecture options than the config builds."""


def _encode(options: Mapping[str, Any]) -> Tensor:
    return torch.tensor(list(json.dumps(options, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def read_record(record: Tensor) -> dict[str, Any]:
    """The options stored in a record buffer."""
    return json.loads(bytes(record.detach().cpu().to(torch.uint8).tolist()).decode("utf-8"))


def record_architecture(module: nn.Module, options: Mapping[str, Any]) -> None:
    """Register ``options`` (JSON-serialisable; tuples become lists) as ``module``'s ``architecture`` buffer."""
    module.register_buffer(RECORD_KEY, _encode(json.loads(json.dumps(dict(options)))))


def _show(value: Any) -> str:
    return "(not recorded)" if value is None else json.dumps(value)


def _cli(value: Any) -> str:
    """How ``monai.bundle run`` takes the value: strings bare, lists and numbers as JSON without spaces."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def check_architecture(
    module: nn.Module, state_dict: dict[str, Tensor], prefix: str, legacy: Mapping[str, Any] | None = None
) -> None:
    """Compare the record in ``state_dict`` with ``module``'s own; raise naming every option that differs.

    Args:
        module: the network about to load ``state_dict`` (with a record buffer).
        state_dict: the checkpoint (as passed to ``_load_from_state_dict``); on success its record is replaced by
            the module's own, so an equal record with another encoding never fails on shape.
        prefix: the module's key prefix in ``state_dict``.
        legacy: the values of options added later, for checkpoints whose record (or whole record) predates them:
            their earlier behaviour. ``None``: checkpoints without a record are not checked.
    """
    key = prefix + RECORD_KEY
    ours = read_record(getattr(module, RECORD_KEY))
    if key not in state_dict and legacy is None:
        theirs = ours
    else:  # options the record lacks (added later) had their legacy value, else they are taken as equal
        recorded = read_record(state_dict[key]) if key in state_dict else {}
        theirs = {**ours, **json.loads(json.dumps(dict(legacy or {}))), **recorded}
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        trained = ", ".join(f"{k}={_show(theirs.get(k))}" for k in differ)
        built = ", ".join(f"{k}={_show(ours.get(k))}" for k in differ)
        fix = " ".join(f"--{k} {_cli(theirs[k])}" for k in differ if k in theirs)
        raise ArchitectureMismatchError(
            f"{type(module).__name__}: the checkpoint was trained with {trained}, but the config builds {built}; "
            f"load it with {fix} (the same options for training, evaluation, inference and export)"
        )
    state_dict[key] = getattr(module, RECORD_KEY).clone()
