"""The scalar linear recurrence behind VMamba's d_state = 1 scan: the closed form per chunk and the compiled loop must
equal the sequential loop in values and gradients, stay finite for strong decays, and be picked as documented."""

import pytest
import torch

import medad_monai.networks.linear_recurrence as lr
from medad_monai.networks.linear_recurrence import (
    HAS_NUMBA,
    linear_recurrence,
    linear_recurrence_chunked,
    linear_recurrence_numba,
    linear_recurrence_ref,
)

TOL = 1e-4


def _inputs(shape: tuple[int, ...], scale: float = 2.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return -scale * torch.rand(*shape, generator=g), torch.randn(*shape, generator=g)


def test_reference_by_hand() -> None:
    # h0 = 1, h1 = 0.5 * 1 + 2 = 2.5, h2 = 0.25 * 2.5 - 1 = -0.375
    log_a = torch.log(torch.tensor([[0.3, 0.5, 0.25]]))
    b = torch.tensor([[1.0, 2.0, -1.0]])
    assert torch.allclose(linear_recurrence_ref(log_a, b), torch.tensor([[1.0, 2.5, -0.375]]))
    assert torch.allclose(linear_recurrence_chunked(log_a, b, chunk_size=2), torch.tensor([[1.0, 2.5, -0.375]]))


@pytest.mark.parametrize("length", [1, 7, 64, 200])
@pytest.mark.parametrize("chunk", [1, 3, 16, 64, 512])
def test_chunked_matches_reference(length: int, chunk: int) -> None:
    log_a, b = _inputs((2, 3, 5, length))
    ref = linear_recurrence_ref(log_a, b)
    out = linear_recurrence_chunked(log_a, b, chunk_size=chunk)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= TOL


def test_strong_decays_halve_the_chunk_and_stay_exact() -> None:
    # cumulative log-decays of ~-50 per position: every chunk longer than one position exceeds the limit
    log_a, b = _inputs((2, 4, 130), scale=100.0)
    ref = linear_recurrence_ref(log_a, b)
    out = linear_recurrence_chunked(log_a, b, chunk_size=64)
    assert torch.isfinite(out).all() and (out - ref).abs().max() <= TOL
    # a tight limit forces smaller chunks on mild decays: same values
    log_a, b = _inputs((2, 4, 130), scale=1.0)
    loose = linear_recurrence_chunked(log_a, b, chunk_size=64)
    tight = linear_recurrence_chunked(log_a, b, chunk_size=64, log_range_limit=3.0)
    assert (loose - tight).abs().max() <= TOL


@pytest.mark.parametrize("method", ["chunked", "numba"])
def test_gradients_match_reference(method: str) -> None:
    log_a, b = _inputs((2, 3, 150), scale=1.0, seed=1)
    weight = torch.randn(2, 3, 150, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (linear_recurrence_ref, linear_recurrence_chunked if method == "chunked" else linear_recurrence_numba):
        la, bb = log_a.clone().requires_grad_(), b.clone().requires_grad_()
        (fn(la, bb) * weight).sum().backward()
        grads.append((la.grad, bb.grad))
    (ga_ref, gb_ref), (ga, gb) = grads
    assert (ga - ga_ref).abs().max() <= TOL * max(1.0, ga_ref.abs().max().item())
    assert (gb - gb_ref).abs().max() <= TOL * max(1.0, gb_ref.abs().max().item())


def test_numba_is_installed_and_matches_reference() -> None:
    assert HAS_NUMBA, "numba is a dependency of medad-monai (the compiled scan); is the install complete?"
    log_a, b = _inputs((3, 4, 97), seed=3)
    ref = linear_recurrence_ref(log_a, b)
    assert (linear_recurrence_numba(log_a, b) - ref).abs().max() <= TOL
    # float64 runs in float64; bfloat16 in float32 and comes back as bfloat16
    assert linear_recurrence_numba(log_a.double(), b.double()).dtype == torch.float64
    out16 = linear_recurrence_numba(log_a.bfloat16(), b.bfloat16())
    assert out16.dtype == torch.bfloat16 and (out16.float() - ref).abs().max() <= 0.1 * ref.abs().max()


def test_bad_input() -> None:
    log_a, b = _inputs((2, 10))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_recurrence_chunked(log_a, b, chunk_size=0)
    with pytest.raises(ValueError, match="same shape"):
        linear_recurrence_chunked(log_a, b[:, :5])
    with pytest.raises(ValueError, match="same shape"):
        linear_recurrence_numba(log_a, b[:, :5])


def test_dispatch(monkeypatch) -> None:
    calls: list[str] = []

    def fake_numba(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append("numba")
        return linear_recurrence_ref(log_a, b)

    monkeypatch.setattr(lr, "linear_recurrence_numba", fake_numba)
    log_a, b = _inputs((2, 20))
    linear_recurrence(log_a, b)
    assert calls == ["numba"]  # eager, CPU, numba installed
    linear_recurrence(log_a, b, use_compiled=False)
    assert calls == ["numba"]  # the closed form
    scripted = torch.jit.script(lr.linear_recurrence)  # TorchScript compiles only the PyTorch form
    assert (scripted(log_a, b, 8, True) - linear_recurrence_ref(log_a, b)).abs().max() <= TOL
    assert calls == ["numba"]
