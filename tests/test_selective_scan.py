"""The vectorised selective scans (closed-form chunked, block-wise) must reproduce the sequential S6 recurrence
(VMamba / Mamba semantics), for d_state 1 (VMamba v05) and 16 (the original VMamba, PDD's teacher)."""

import warnings

import pytest
import torch

import medad_monai.networks.selective_scan as ss
from medad_monai.networks.selective_scan import (
    DEFAULT_CHUNK_SIZE,
    selective_scan,
    selective_scan_blockwise,
    selective_scan_chunked,
    selective_scan_ref,
)

TOL = 1e-4


def _inputs(
    batch: int = 2,
    groups: int = 4,
    d: int = 6,
    d_state: int = 1,
    length: int = 37,
    grouped: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    kd = groups * d
    u = torch.randn(batch, kd, length, generator=g)
    delta = 0.5 * torch.randn(batch, kd, length, generator=g)
    A = -torch.exp(torch.randn(kd, d_state, generator=g))  # VMamba: A = -exp(A_logs) < 0
    bc_shape = (batch, groups, d_state, length) if grouped else (batch, d_state, length)
    B = torch.randn(*bc_shape, generator=g)
    C = torch.randn(*bc_shape, generator=g)
    D = torch.randn(kd, generator=g)
    delta_bias = torch.randn(kd, generator=g)
    return u, delta, A, B, C, D, delta_bias


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _scan(method: str, *args, block: int = 0, **kwargs) -> torch.Tensor:
    """The chunked scan (``block``: chunk_size, 0 = default; "compiled": its numba loop) or the block-wise one
    (``block``: block_size)."""
    if method in ("chunked", "compiled"):
        size = block or DEFAULT_CHUNK_SIZE
        return selective_scan_chunked(*args, chunk_size=size, use_compiled=method == "compiled", **kwargs)
    return selective_scan_blockwise(*args, block_size=block, **kwargs)


SCANS = [("chunked", 1), ("chunked", 4), ("chunked", 16), ("chunked", 64), ("compiled", 0)]
SCANS += [("blockwise", 0), ("blockwise", 1), ("blockwise", 4)]
SCANS += [("blockwise", 16), ("blockwise", 100)]


@pytest.mark.parametrize("d_state", [1, 4, 16])
@pytest.mark.parametrize("length", [1, 5, 16, 37, 64])
@pytest.mark.parametrize("method,block", SCANS)
def test_matches_reference(method: str, block: int, d_state: int, length: int) -> None:
    u, delta, A, B, C, D, delta_bias = _inputs(d_state=d_state, length=length)
    ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus=True)
    out = _scan(method, u, delta, A, B, C, D, delta_bias, delta_softplus=True, block=block)
    assert out.shape == ref.shape == u.shape
    assert _max_diff(out, ref) <= TOL


@pytest.mark.parametrize("method,d_state", [("chunked", 4), ("blockwise", 16)])
@pytest.mark.parametrize("use_d", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("grouped", [True, False])
def test_optional_arguments(method: str, d_state: int, use_d: bool, use_bias: bool, softplus: bool, grouped: bool):
    u, delta, A, B, C, D, delta_bias = _inputs(d_state=d_state, length=23, grouped=grouped, seed=1)
    if not softplus:
        # without softplus the caller must provide a non-negative step (else decays exceed 1 and both blow up)
        delta, delta_bias = delta.abs(), delta_bias.abs()
    Dx: torch.Tensor | None = D if use_d else None
    bias: torch.Tensor | None = delta_bias if use_bias else None
    ref = selective_scan_ref(u, delta, A, B, C, Dx, bias, softplus)
    out = _scan(method, u, delta, A, B, C, Dx, bias, softplus, block=8 if method == "chunked" else 6)
    assert _max_diff(out, ref) <= TOL


def test_default_chunk_and_long_sequence() -> None:
    # several chunks plus a ragged tail: exercises the inter-chunk scan over many chunks
    u, delta, A, B, C, D, delta_bias = _inputs(batch=1, d=4, d_state=1, length=301, seed=2)
    ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, True)
    for chunk in (DEFAULT_CHUNK_SIZE, 64):
        out = selective_scan(u, delta, A, B, C, D, delta_bias, True, chunk_size=chunk)
        assert _max_diff(out, ref) <= TOL


def test_d_state_16_vmamba_sizes() -> None:
    # VMamba-T v0 stage 1 at 64 px (L = 16*16, K = 4, d_inner 192: one block), then narrower scans (several blocks)
    for batch, d, length in ((1, 192, 256), (2, 8, 256), (2, 16, 64)):
        u, delta, _, B, C, D, delta_bias = _inputs(batch=batch, d=d, d_state=16, length=length, seed=7)
        A = -torch.arange(1, 17, dtype=torch.float32).repeat(4 * d, 1)
        ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, True)
        assert _max_diff(selective_scan(u, delta, A, B, C, D, delta_bias, True), ref) <= TOL


def test_dispatch_by_state_size_and_gradient(monkeypatch) -> None:
    calls: list[str] = []
    chunked, blockwise, compiled = ss.selective_scan_chunked, ss.selective_scan_blockwise, ss.selective_scan_compiled
    monkeypatch.setattr(ss, "selective_scan_chunked", lambda *a: calls.append("chunked") or chunked(*a))
    monkeypatch.setattr(ss, "selective_scan_blockwise", lambda *a: calls.append("blockwise") or blockwise(*a))
    monkeypatch.setattr(ss, "selective_scan_compiled", lambda *a: calls.append("compiled") or compiled(*a))
    for d_state in (1, 2, 16):
        u, delta, A, B, C, D, delta_bias = _inputs(d_state=d_state, length=12)
        ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, True)
        assert _max_diff(ss.selective_scan(u, delta, A, B, C, D, delta_bias, True), ref) <= TOL
    # nothing needs a gradient (a frozen teacher): the compiled forward-only loop for every state size
    assert calls == ["compiled", "compiled", "compiled"]
    calls.clear()
    for d_state in (1, 16):  # training: d_state 1 to the per-state recurrence (VMamba v05), larger to block-wise
        u, delta, A, B, C, D, delta_bias = _inputs(d_state=d_state, length=12)
        A.requires_grad_(True)
        assert ss.selective_scan(u, delta, A, B, C, D, delta_bias, True).requires_grad
    assert calls == ["chunked", "blockwise"]
    with torch.no_grad():  # the same parameters under no_grad: nothing to differentiate
        ss.selective_scan(u, delta, A, B, C, D, delta_bias, True)
    ss.selective_scan(u, delta, A.detach(), B, C, D, delta_bias, True, use_compiled=False)
    assert calls == ["chunked", "blockwise", "compiled", "blockwise"]


@pytest.mark.parametrize("method,d_state", [("chunked", 1), ("chunked", 2), ("blockwise", 2), ("blockwise", 16)])
def test_strong_decay_is_stable(method: str, d_state: int) -> None:
    # |delta * A| up to ~100 per step: a closed form over a whole chunk would overflow (exp(-cumsum)); the chunked
    # scan shortens its chunks until it does not
    u, delta, A, B, C, D, delta_bias = _inputs(d_state=d_state, length=40, seed=3)
    A = A * 30.0
    delta = delta.abs() * 3.0
    ref = selective_scan_ref(u, delta, A, B, C, D, None, False)
    out = _scan(method, u, delta, A, B, C, D, None, False, block=16 if method == "chunked" else 8)
    assert torch.isfinite(out).all()
    assert _max_diff(out, ref) <= TOL


@pytest.mark.parametrize(
    "method,d_state,block,rtol",
    [
        ("chunked", 1, 0, 1e-4),
        ("chunked", 2, 4, 1e-4),
        ("compiled", 1, 0, 1e-4),
        ("blockwise", 16, 0, 1e-4),
        ("blockwise", 16, 5, 1e-4),
    ],
)
def test_gradients_match_reference(method: str, d_state: int, block: int, rtol: float) -> None:
    inputs = _inputs(batch=2, d=3, d_state=d_state, length=23, seed=4)
    grads = []
    for fn in (selective_scan_ref, lambda *a, **k: _scan(method, *a, block=block, **k)):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        fn(*leaves, delta_softplus=True).square().sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for g_ref, g_out in zip(*grads):
        assert _max_diff(g_out, g_ref) <= rtol * max(1.0, g_ref.abs().max().item())


@pytest.mark.parametrize("d_state", [1, 16])
def test_dtype_is_preserved(d_state: int) -> None:
    u, delta, A, B, C, D, delta_bias = _inputs(length=9, d_state=d_state)
    out = selective_scan(u.double(), delta.double(), A, B.double(), C.double(), D, delta_bias, True)
    assert out.dtype == torch.float64


@pytest.mark.parametrize("method", ["chunked", "blockwise"])
def test_non_contiguous_inputs(method: str) -> None:
    u, delta, A, B, C, D, _ = _inputs(length=13, d_state=2, seed=5)
    delta = delta.abs()  # no softplus/bias, so _prepare_delta hands the caller's (strided) tensor through
    ref = selective_scan_ref(u, delta, A, B, C, D, None, False)
    views = [t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in (u, delta, B, C)]
    assert not any(v.is_contiguous() for v in views)
    out = _scan(method, views[0], views[1], A, views[2], views[3], D, None, False, block=4)
    assert _max_diff(out, ref) <= TOL


def test_invalid_arguments() -> None:
    u, delta, A, B, C, D, delta_bias = _inputs(length=9)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="block_size"):
        selective_scan_blockwise(u, delta, A, B, C, block_size=-1)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:-1], B, C)
    with pytest.raises(ValueError, match="divisible"):
        selective_scan(u[:, :-1], delta[:, :-1], A[:-1], B, C)


def test_mamba_kernel_argument_mapping(monkeypatch) -> None:
    # mamba_ssm's selective_scan_fn takes z between D and delta_bias; emulate it on CPU to check the call
    def fake_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):  # noqa: N803
        assert z is None and B.dim() == 4
        return selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)

    monkeypatch.setattr(ss, "_mamba_selective_scan_fn", fake_kernel)
    u, delta, A, B, C, D, delta_bias = _inputs(length=10, grouped=False)
    ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, True)
    out = ss._selective_scan_mamba_cuda(u, delta, A, B.unsqueeze(1), C.unsqueeze(1), D, delta_bias, True)
    assert _max_diff(out, ref) <= TOL


@pytest.mark.parametrize("d_state", [1, 16])
def test_torchscript(d_state: int) -> None:
    u, delta, A, B, C, D, delta_bias = _inputs(length=19, d_state=d_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch, but still supported
        scripted = torch.jit.script(selective_scan)
    ref = selective_scan_ref(u, delta, A, B, C, D, delta_bias, True)
    for block in (0, 4):
        assert _max_diff(scripted(u, delta, A, B, C, D, delta_bias, True, 4, True, block), ref) <= TOL


def test_automatic_block_size() -> None:
    # CPU: one block (plain time-major recurrence) for wide scans, ~2 sqrt(L) for narrow ones; blocks on other devices
    assert ss._auto_block_size(4096, 768 * 16) == 4096  # VMamba-T v0 stage 1 at 256 px, batch 1
    assert ss._auto_block_size(4096, 96 * 16) == 128
    assert ss._auto_block_size(4096, 768 * 16, on_cpu=False) == 128
