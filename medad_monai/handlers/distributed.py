"""Data-parallel gradient averaging for MONAI trainers of method-based networks (see
:mod:`medad_monai.distributed` for why this replaces ``DistributedDataParallel``), and the handler list of each
rank (:func:`distributed_handlers`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch import nn

from medad_monai.distributed import ALL_RANK_HANDLERS, is_rank_zero

__all__ = ["GradientAllReduce", "broadcast_state", "distributed_handlers"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def _broadcast(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Copy each tensor from rank ``src`` to every rank, in place (bool travels as uint8, which every backend
    supports)."""
    if not _active():
        return
    for t in tensors:
        if t.dtype == torch.bool:
            tmp = t.to(torch.uint8)
            dist.broadcast(tmp, src)
            t.copy_(tmp.bool())
        else:
            dist.broadcast(t.data, src)


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Copy ``module``'s parameters and buffers from rank ``src`` to every rank."""
    _broadcast([*module.parameters(), *module.buffers()], src)


class GradientAllReduce:
    """Average the gradients of the engine's optimiser parameters over all ranks after every backward pass.

    With every rank computing the mean loss over an equal-sized shard of the batch, the averaged gradient is the
    gradient of the mean loss over the whole (global) batch, as ``DistributedDataParallel`` computes it. Also
    broadcasts ``network``'s parameters and buffers from rank 0 when the engine starts (after any checkpoint was
    loaded), so the replicas start identical, and its buffers (batch-norm statistics, thresholds) after every
    epoch, so they stay identical. A no-op without a process group of more than one rank.

    Args:
        network: the module whose state is kept identical across ranks (the trainer's network).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.sync_state)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self.average_gradients)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.sync_buffers)

    def sync_state(self, engine: Engine | None = None) -> None:
        broadcast_state(self.network)

    def sync_buffers(self, engine: Engine | None = None) -> None:
        _broadcast(list(self.network.buffers()))

    @torch.no_grad()
    def average_gradients(self, engine: Engine) -> None:
        if not _active():
            return
        world = dist.get_world_size()
        grads = [p.grad for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        # one flat all-reduce instead of one per tensor: far fewer messages for the many small decoder tensors
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def distributed_handlers(
    handlers: Sequence[Any], network: torch.nn.Module, all_ranks: Sequence[str] = ALL_RANK_HANDLERS
) -> list[Any]:
    """A trainer's handlers for this rank, plus the gradient synchronisation.

    Rank 0 keeps every handler; the other ranks keep only those whose class name is in ``all_ranks`` (they change
    the training state: checkpoint loading, learning-rate schedules, episode resampling), so checkpoints,
    validation and logs are written once. Every rank gets a
    :class:`GradientAllReduce` for ``network``.
    """
    kept = [h for h in handlers if is_rank_zero() or type(h).__name__ in set(all_ranks)]
    return [*kept, GradientAllReduce(network)]
