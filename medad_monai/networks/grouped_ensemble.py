"""K autoencoders of one architecture run as one computation (DDAD's ensembles, MedIA 2023 §3.2).

Member ``k``'s images and feature channels occupy the ``k``-th group of the channel axis: each convolution is one
grouped convolution (``groups=K``) whose weight is the members' weights concatenated, each fully connected layer one
batched matrix product, each BatchNorm one call over the concatenated channels. BatchNorm is per channel, so its
batch statistics are exactly each member's own, and the running statistics are written back into the members'
buffers. The parameters stay in the members (checkpoints, optimisers and the member loop are unchanged); they are
concatenated at every call, so the gradients flow to each member's own parameters. Each output is the same sum as in
the member loop (tested equal within 1e-6).

Measured on CPU (``python benchmarks/cpu_alternatives.py``), grouped convolutions are slower than the loop, so the
bundle keeps the loop by default (``vectorised_members``); on a GPU the K-fold fewer kernel launches are the point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["grouped_outputs"]


def _batch_norm(h: Tensor, norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> Tensor:
    """One BatchNorm over the members' concatenated channels; in training, each member's running statistics are
    updated as its own BatchNorm would update them."""
    first = norms[0]
    weight = torch.cat([n.weight for n in norms]) if first.affine else None
    bias = torch.cat([n.bias for n in norms]) if first.affine else None
    if not first.track_running_stats:
        return F.batch_norm(h, None, None, weight, bias, True, 0.0, first.eps)
    mean = torch.cat([n.running_mean for n in norms])
    var = torch.cat([n.running_var for n in norms])
    if not first.training:
        return F.batch_norm(h, mean, var, weight, bias, False, 0.0, first.eps)
    tracked = first.num_batches_tracked
    momentum = first.momentum if first.momentum is not None else 1.0 / (float(tracked) + 1.0)
    out = F.batch_norm(h, mean, var, weight, bias, True, momentum, first.eps)
    with torch.no_grad():  # F.batch_norm updated the concatenated copies: hand each member its share
        for n, m, v in zip(norms, mean.chunk(len(norms)), var.chunk(len(norms))):
            n.running_mean.copy_(m)
            n.running_var.copy_(v)
            n.num_batches_tracked.add_(1)
    return out


def _linear(h: Tensor, layers: Sequence[nn.Linear]) -> Tensor:
    """``(B, K, in)`` through member ``k``'s linear layer for each ``k``: one batched matrix product."""
    weight = torch.stack([layer.weight for layer in layers])  # (K, out, in)
    bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)  # (K, 1, out)
    return torch.baddbmm(bias, h.transpose(0, 1), weight.transpose(1, 2)).transpose(0, 1)


def _conv(h: Tensor, convs: Sequence[nn.Conv2d | nn.ConvTranspose2d]) -> Tensor:
    """Member ``k``'s convolution on channel group ``k``: one grouped (transposed) convolution."""
    first = convs[0]
    weight = torch.cat([c.weight for c in convs])
    bias = torch.cat([c.bias for c in convs]) if first.bias is not None else None
    if isinstance(first, nn.ConvTranspose2d):
        return F.conv_transpose2d(
            h, weight, bias, first.stride, first.padding, first.output_padding, len(convs), first.dilation
        )
    return F.conv2d(h, weight, bias, first.stride, first.padding, first.dilation, len(convs))


def _run(h: Tensor, stages: Sequence[nn.Sequential], batch: int) -> Tensor:
    """Run the members' parallel ``nn.Sequential`` stages (conv / linear, BatchNorm, ReLU) on the grouped ``h``."""
    for layers in zip(*stages):
        first = layers[0]
        if isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
            h = _conv(h, layers)
        elif isinstance(first, nn.Linear):
            h = _linear(h, layers)
        elif isinstance(first, nn.modules.batchnorm._BatchNorm):
            shape = h.shape
            # (B, K, D) after a linear layer: BatchNorm1d over the K * D concatenated features
            h = _batch_norm(h.reshape(batch, -1) if h.dim() == 3 else h, layers).reshape(shape)
        elif isinstance(first, nn.ReLU):
            h = F.relu(h)
        else:
            raise TypeError(f"grouped ensemble: no grouped form of {type(first).__name__}")
    return h


def grouped_outputs(members: Sequence[nn.Module], x: Tensor) -> tuple[Tensor, Tensor | None]:
    """Each member's output on its own images, computed together.

    Args:
        members: K :class:`~medad_monai.networks.autoencoders.AE` (or ``MemAE``) of one architecture.
        x: ``(B, K, C, H, W)``: member ``k`` reads ``x[:, k]``.

    Returns:
        outputs ``(B, K, C_out, H, W)`` and, for MemAE, the memory attention ``(B, K, mem_dim)`` (else ``None``).
    """
    batch, k = x.shape[0], len(members)
    h = _run(x.reshape(batch, -1, *x.shape[-2:]), [m.encoder for m in members], batch)
    z = _run(h.reshape(batch, k, -1), [m.linear_enc for m in members], batch)
    attention = None
    if hasattr(members[0], "memory"):  # MemAE (Gong et al. 2019, Eq. 4-7), each member its own memory
        memory = torch.stack([m.memory.weight for m in members])  # (K, mem_dim, latent)
        attention = torch.softmax(torch.einsum("bkd,kmd->bkm", z, memory), dim=2)
        lam = members[0].memory.shrink_thres
        if lam > 0:
            attention = F.relu(attention - lam) * attention / (torch.abs(attention - lam) + 1e-12)
            attention = F.normalize(attention, p=1.0, dim=2)
        z = torch.einsum("bkm,kmd->bkd", attention, memory)
    h = _run(z, [m.linear_dec for m in members], batch)
    first = members[0]
    h = _run(h.reshape(batch, k * first.c3, first.fm, first.fm), [m.decoder for m in members], batch)
    return h.reshape(batch, k, -1, *h.shape[-2:]), attention
