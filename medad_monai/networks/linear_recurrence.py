"""The scalar linear recurrence ``h_t = exp(log_a_t) * h_{t-1} + b_t`` (``h_{-1} = 0``) along the last axis.

With ``d_state == 1`` (VMamba v05, PDD's ``vssm1_tiny`` teacher) the selective scan of S6 is this recurrence once per
channel: ``log_a_t = delta_t * A`` and ``b_t = delta_t * B_t * u_t`` (Gu & Dao, "Mamba", Algorithm 2; VMamba,
section "Preliminaries"), with no state dimension to contract. Two implementations, equal to the sequential loop:

* :func:`linear_recurrence_chunked`, pure PyTorch. Inside a chunk of ``T`` positions the recurrence has the closed
  form ``h_t = exp(S_t) * sum_{s<=t} exp(-S_s) b_s`` with ``S`` the chunk's cumulative ``log_a``: two cumulative
  sums, one exponential and one division over the whole tensor, no (T x T) matrices. The state is then carried
  across the ``L / T`` chunks by a short sequential loop on one value per channel and chunk. ``exp(-S)`` grows with
  the chunk's total log-decay, so chunks whose total exceeds :data:`LOG_RANGE_LIMIT` (float32 overflows at
  ``exp(88)``) run their T positions one step at a time instead, all such chunks at once.
* :func:`linear_recurrence_numba`, a compiled loop (numba, when installed) with its own backward pass, the adjoint
  recurrence ``g_t = dL/dh_t + a_{t+1} g_{t+1}`` run backwards: ``dL/db_t = g_t``, ``dL/dlog_a_t = g_t a_t h_{t-1}``.

:func:`linear_recurrence` picks the compiled loop for CPU tensors in eager mode when numba is importable, and the
PyTorch form otherwise (CUDA, TorchScript scripting or tracing, where a Python autograd function cannot be saved).
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medad_monai.networks.numba_jit import HAS_NUMBA, jit

__all__ = [
    "DEFAULT_RECURRENCE_CHUNK",
    "HAS_NUMBA",
    "LOG_RANGE_LIMIT",
    "linear_recurrence",
    "linear_recurrence_chunked",
    "linear_recurrence_numba",
    "linear_recurrence_ref",
]

# Chunk length of the PyTorch form. Longer chunks mean fewer sequential carry steps (L / T of them) but a larger total
# log-decay per chunk; 64 keeps the carry at 64 steps for VMamba-T's stage 1 (L = 4096). On CPU (1 thread, L = 4096,
# 384 channels) 32-128 were within noise of each other, 16 ~1.2x slower (benchmarks/bench_selective_scan.py).
DEFAULT_RECURRENCE_CHUNK = 64
# Largest |cumulative log-decay| allowed inside one chunk: exp(60) ~ 1e26 leaves float32 (max ~3e38) a factor 1e12 of
# headroom for the inputs b, and exp(-60) ~ 1e-26 is still a normal float.
LOG_RANGE_LIMIT = 60.0


def linear_recurrence_ref(log_a: Tensor, b: Tensor) -> Tensor:
    """Sequential reference: one step per position. O(L) Python iterations; for tests and benchmarks."""
    a = log_a.exp()
    h = torch.zeros_like(b[..., 0])
    out = []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, dim=-1)


def _carry(decay: Tensor, ends: Tensor) -> Tensor:
    """States entering each chunk from the chunk-level recurrence ``H_c = decay_c * H_{c-1} + ends_c``.

    ``decay``/``ends``: ``(rows, chunks)``. A sequential loop over chunks on contiguous time-major rows; the list
    is stacked once at the end (no concatenation inside the loop).
    """
    decay_t = decay.t().contiguous()
    ends_t = ends.t().contiguous()
    h = torch.zeros_like(ends_t[0])
    entering = []
    for c in range(ends_t.shape[0]):
        entering.append(h)
        h = torch.addcmul(ends_t[c], decay_t[c], h)
    return torch.stack(entering, dim=1)


def linear_recurrence_chunked(
    log_a: Tensor, b: Tensor, chunk_size: int = DEFAULT_RECURRENCE_CHUNK, log_range_limit: float = LOG_RANGE_LIMIT
) -> Tensor:
    """``h_t = exp(log_a_t) h_{t-1} + b_t`` along the last axis in closed form per chunk (module docstring).

    Args:
        log_a: log-decays, any shape ``(..., L)`` (``<= 0`` for a contracting recurrence, as in VMamba).
        b: inputs, the same shape.
        chunk_size: positions per chunk.
        log_range_limit: largest magnitude of a chunk's cumulative log-decay for the closed form (default
            :data:`LOG_RANGE_LIMIT`); chunks beyond it run their positions one step at a time.

    Returns:
        ``h`` with the shape of ``b``, float32 when the inputs are. Differentiable (autograd through every step).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if log_a.shape != b.shape:
        raise ValueError(f"log_a and b must have the same shape, got {list(log_a.shape)} and {list(b.shape)}")
    shape = list(b.shape)
    seqlen = shape[-1]
    la = log_a.reshape(-1, seqlen)
    bb = b.reshape(-1, seqlen)
    rows = bb.shape[0]
    T = min(chunk_size, seqlen)
    nc = (seqlen + T - 1) // T
    pad = nc * T - seqlen
    # padding with log_a = 0 and b = 0 comes after every real position, so it never changes real outputs;
    # (rows * chunks, T) 2D views: torch's cumsum along the last axis of a 2D tensor is ~8x faster than of 3D
    la_c = _pad(la, pad).reshape(rows * nc, T)
    b_c = _pad(bb, pad).reshape(rows * nc, T)
    S = torch.cumsum(la_c, dim=-1)
    strong = S.detach().abs().amax(dim=-1) > log_range_limit  # chunks where 1 / exp(S) could overflow
    any_strong = bool(strong.any())
    if any_strong:
        S = torch.where(strong.unsqueeze(1), torch.zeros_like(S), S)  # finite (and gradient-free) placeholders
    decay = S.exp()
    h = decay * torch.cumsum(b_c / decay, dim=-1)  # each chunk from h = 0
    if any_strong:
        idx = strong.nonzero().squeeze(1)
        la_s = la_c.index_select(0, idx)
        h = h.index_copy(0, idx, _within_chunks(la_s, b_c.index_select(0, idx)))
        decay = decay.index_copy(0, idx, torch.cumsum(la_s, dim=-1).exp())  # may underflow to 0: harmless
    if nc > 1:
        h_enter = _carry(decay[:, -1].reshape(rows, nc), h[:, -1].reshape(rows, nc))
        h = torch.addcmul(h, decay, h_enter.reshape(rows * nc, 1))
    return h.reshape(rows, nc * T)[:, :seqlen].reshape(shape)


def _pad(x: Tensor, pad: int) -> Tensor:
    """Zero-pad the last axis (no copy when there is nothing to pad)."""
    return F.pad(x, [0, pad]) if pad > 0 else x


def _within_chunks(la: Tensor, b: Tensor) -> Tensor:
    """The recurrence inside each row of ``(chunks, T)`` from h = 0, one position per step, all chunks at once (for
    the chunks whose decays are too strong for the closed form)."""
    a_t = la.exp().t().contiguous()
    b_t = b.t().contiguous()
    h = torch.zeros_like(b_t[0])
    out = []
    for t in range(b_t.shape[0]):
        h = torch.addcmul(b_t[t], a_t[t], h)
        out.append(h)
    return torch.stack(out, dim=1)


if HAS_NUMBA:

    @jit()
    def _numba_forward(a: Any, b: Any, h: Any) -> None:  # pragma: no cover (compiled)
        """``h[r, t] = a[r, t] * h[r, t-1] + b[r, t]`` per row: one dependent chain of multiply-adds per channel."""
        rows, length = b.shape
        for r in range(rows):
            acc = 0.0  # accumulate in float64: no extra latency on the dependent chain, less rounding
            for t in range(length):
                acc = a[r, t] * acc + b[r, t]
                h[r, t] = acc

    @jit()
    def _numba_backward(a: Any, h: Any, grad_h: Any, grad_a: Any, grad_b: Any) -> None:  # pragma: no cover
        """Adjoint ``g_t = grad_h_t + a_{t+1} g_{t+1}``, run backwards: ``grad_b = g``, ``grad_a = g h_{t-1}``."""
        rows, length = h.shape
        for r in range(rows):
            g = 0.0
            a_next = 0.0
            for t in range(length - 1, -1, -1):
                g = grad_h[r, t] + a_next * g
                grad_b[r, t] = g
                grad_a[r, t] = g * h[r, t - 1] if t > 0 else 0.0
                a_next = a[r, t]


class _NumbaRecurrence(torch.autograd.Function):
    """The compiled loop as an autograd function (CPU, float32/float64)."""

    @staticmethod
    def forward(ctx: Any, log_a: Tensor, b: Tensor) -> Tensor:
        length = b.shape[-1]
        a = log_a.detach().exp().reshape(-1, length).contiguous()
        bb = b.detach().reshape(-1, length).contiguous()
        h = torch.empty_like(bb)
        _numba_forward(a.numpy(), bb.numpy(), h.numpy())
        ctx.save_for_backward(a, h)
        return h.reshape(b.shape)

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor) -> tuple[Tensor, Tensor]:
        a, h = ctx.saved_tensors
        gh = grad_h.detach().to(h.dtype).reshape(h.shape).contiguous()
        grad_a = torch.empty_like(h)
        grad_b = torch.empty_like(h)
        _numba_backward(a.numpy(), h.numpy(), gh.numpy(), grad_a.numpy(), grad_b.numpy())
        shape = grad_h.shape
        return (grad_a * a).reshape(shape), grad_b.reshape(shape)  # d/dlog_a = d/da * a


@torch.jit.unused
def linear_recurrence_numba(log_a: Tensor, b: Tensor) -> Tensor:
    """The recurrence as a compiled loop (numba) with an analytic backward pass; CPU tensors, float32 or float64
    (other float types run in float32). Raises ``RuntimeError`` when numba is not installed."""
    if not HAS_NUMBA:
        raise RuntimeError("linear_recurrence_numba needs numba (pip install numba)")
    if log_a.shape != b.shape:
        raise ValueError(f"log_a and b must have the same shape, got {list(log_a.shape)} and {list(b.shape)}")
    if log_a.device.type != "cpu" or b.device.type != "cpu":
        raise ValueError(f"linear_recurrence_numba runs on CPU tensors, got {log_a.device} and {b.device}")
    dtype = b.dtype
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    h = _NumbaRecurrence.apply(log_a.to(work), b.to(work))
    return h.to(dtype)


def linear_recurrence(
    log_a: Tensor, b: Tensor, chunk_size: int = DEFAULT_RECURRENCE_CHUNK, use_compiled: bool = True
) -> Tensor:
    """``h_t = exp(log_a_t) h_{t-1} + b_t`` along the last axis: the compiled loop for CPU tensors in eager mode when
    numba is installed and ``use_compiled`` is set, :func:`linear_recurrence_chunked` otherwise."""
    if not torch.jit.is_scripting():  # noqa: SIM102 (must stay a separate `if` for TorchScript)
        if HAS_NUMBA and use_compiled and b.device.type == "cpu" and not torch.jit.is_tracing():
            return linear_recurrence_numba(log_a, b)
    return linear_recurrence_chunked(log_a, b, chunk_size)
