"""Multi-process training (``multi_gpu_train.json``): the process group, this process's device and rank.

:mod:`medad_monai.handlers.distributed` holds the handlers (gradient averaging, rank-0-only handlers).

The bundles train methods whose networks compute a training step's outputs through a method other than ``forward``
(``training_outputs``, ``episode_outputs``, ``refinement_outputs``), which ``DistributedDataParallel`` cannot wrap
(it synchronises gradients only through ``forward``), and DDAD trains three overlapping sub-networks in stages,
which overlapping DDP wrappers would corrupt. Data parallelism is therefore explicit and MONAI-native: every rank
runs the same ``SupervisedTrainer`` on its shard of the data (``DistributedSampler``), and
:class:`~medad_monai.handlers.distributed.GradientAllReduce` averages the gradients of the optimiser's parameters
across ranks between ``backward`` and ``optimizer.step`` (MONAI's ``IterationEvents.BACKWARD_COMPLETED``), which is
what DDP computes. Checkpoints, validation, progress bars and logs run on rank 0 only.

Launch: ``torchrun --standalone --nproc_per_node=N -m monai.bundle run --config_file
"['configs/train.json','configs/multi_gpu_train.json']"`` (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "ALL_RANK_HANDLERS",
    "destroy_distributed",
    "init_distributed",
    "is_rank_zero",
    "local_device",
    "world_size",
]

logger = logging.getLogger("medad_monai")

# handlers every rank needs: they change the training state itself (weights loaded, learning rate, episodes,
# the state a resumed training continues from; only rank 0 writes it)
ALL_RANK_HANDLERS = ("CheckpointLoader", "LrScheduleHandler", "EpisodeResampler", "TrainingCheckpoint")


def local_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str = "auto", timeout_minutes: float = 30.0) -> int:
    """Join the process group ``torchrun`` set up (``nccl`` with CUDA, ``gloo`` otherwise); returns the rank.

    Raises:
        RuntimeError: when not launched by ``torchrun`` (no ``WORLD_SIZE``/``RANK`` in the environment).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise RuntimeError(
            "multi_gpu_train.json must be launched by torchrun, e.g. torchrun --standalone --nproc_per_node=2 "
            "-m monai.bundle run --config_file \"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    rank = dist.get_rank()
    logger.info(f"distributed training: rank {rank} of {dist.get_world_size()} ({backend})")
    return rank


def destroy_distributed() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank_zero() -> bool:
    """Whether this process writes checkpoints and logs (always true without a process group)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
