"""The compiled (numba) selective scan for frozen networks: its exponential and softplus against torch's, the scan
against the sequential S6 recurrence for VMamba's state sizes, its threads, and its refusals."""

import pytest
import torch
import torch.nn.functional as F
from test_vmamba import SMALL_V0

from medad_monai.networks.compiled_scan import HAS_NUMBA, fast_exp_array, fast_softplus_array
from medad_monai.networks.selective_scan import selective_scan_compiled, selective_scan_ref
from medad_monai.networks.vmamba import VSSM, set_compiled_scan

pytestmark = pytest.mark.skipif(not HAS_NUMBA, reason="numba is a dependency; this environment cannot load it")


def _inputs(batch: int, groups: int, d: int, d_state: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    kd = groups * d
    u = torch.randn(batch, kd, length, generator=g)
    delta = 0.5 * torch.randn(batch, kd, length, generator=g)
    A = -torch.exp(torch.randn(kd, d_state, generator=g))
    B = torch.randn(batch, groups, d_state, length, generator=g)
    C = torch.randn(batch, groups, d_state, length, generator=g)
    return u, delta, A, B, C, torch.randn(kd, generator=g), torch.randn(kd, generator=g)


def test_fast_exp_against_float64() -> None:
    x = torch.linspace(-87.0, 88.0, 200_001)
    exact = x.double().exp()
    assert ((fast_exp_array(x).double() - exact).abs() / exact).max().item() < 2e-7
    edges = fast_exp_array(torch.tensor([0.0, -200.0, 200.0, float("nan")]))
    assert edges[0].item() == 1.0
    assert 0.0 < edges[1].item() < 2e-38  # clamped at exp(-87): below float32's normal range either way
    assert edges[2].item() == pytest.approx(float(torch.tensor(88.0).double().exp()), rel=1e-6)
    assert torch.isnan(edges[3])


def test_fast_softplus_against_float64() -> None:
    x = torch.cat([torch.linspace(-80.0, 40.0, 200_001), torch.tensor([0.0, 20.0, 20.000002, 1e-30])])
    exact = F.softplus(x.double())
    fast = fast_softplus_array(x).double()
    assert ((fast - exact).abs() / exact).max().item() < 5e-7
    assert fast[-4].item() == pytest.approx(0.6931471805599453, rel=1e-7)
    assert fast[-2].item() == pytest.approx(20.000002, rel=1e-7)  # above torch's threshold of 20: x itself
    assert torch.isnan(fast_softplus_array(torch.tensor([float("nan")]))).all()


@pytest.mark.parametrize(
    "batch,groups,d,d_state,length",
    [(2, 4, 6, 16, 37), (1, 4, 3, 1, 50), (2, 1, 5, 4, 1), (1, 4, 8, 16, 300)],
)
def test_matches_sequential_reference(batch: int, groups: int, d: int, d_state: int, length: int) -> None:
    u, delta, A, B, C, D, bias = _inputs(batch, groups, d, d_state, length)
    ref = selective_scan_ref(u, delta, A, B, C, D, bias, True)
    assert (selective_scan_compiled(u, delta, A, B, C, D, bias, True) - ref).abs().max().item() <= 1e-4
    # the optional arguments: no skip term, no bias, no softplus, one B/C group shared by every channel
    ref = selective_scan_ref(u, delta.abs(), A, B[:, 0], C[:, 0])
    assert (selective_scan_compiled(u, delta.abs(), A, B[:, 0], C[:, 0]) - ref).abs().max().item() <= 1e-4


def test_threads_split_channels_without_changing_values() -> None:
    u, delta, A, B, C, D, bias = _inputs(2, 4, 5, 16, 64, seed=3)
    one = selective_scan_compiled(u, delta, A, B, C, D, bias, True, num_threads=1)
    for threads in (2, 3, 64):  # more threads than rows is fine
        assert torch.equal(selective_scan_compiled(u, delta, A, B, C, D, bias, True, num_threads=threads), one)


def test_dtype_and_non_contiguous_inputs() -> None:
    u, delta, A, B, C, D, bias = _inputs(1, 4, 4, 16, 40, seed=5)
    ref = selective_scan_ref(u, delta, A, B, C, D, bias, True)
    strided = selective_scan_compiled(
        u.transpose(1, 2).contiguous().transpose(1, 2), delta, A.t().contiguous().t(), B, C, D, bias, True
    )
    assert (strided - ref).abs().max().item() <= 1e-4
    half = selective_scan_compiled(u.bfloat16(), delta, A, B, C, D, bias, True)
    assert half.dtype == torch.bfloat16


def test_refuses_gradients_and_bad_shapes() -> None:
    u, delta, A, B, C, D, bias = _inputs(1, 4, 2, 16, 8)
    with pytest.raises(RuntimeError, match="no backward pass"):
        selective_scan_compiled(u, delta, A.requires_grad_(True), B, C, D, bias, True)
    with torch.no_grad():  # the same tensor is fine where autograd records nothing
        selective_scan_compiled(u, delta, A, B, C, D, bias, True)
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_compiled(u, delta, A.detach()[:3], B, C, D, bias, True)


def test_vmamba_with_and_without_the_compiled_scans() -> None:
    torch.manual_seed(0)
    net = VSSM(out_mode="after_downsample", **SMALL_V0).eval()  # the original VMamba's layout: d_state 16
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        compiled = net(x)
        set_compiled_scan(net, False)
        plain = net(x)
    assert all(module.use_compiled_scan is False for module in net.modules() if hasattr(module, "use_compiled_scan"))
    for a, b in zip(compiled, plain):
        assert (a - b).abs().max().item() <= 1e-4


def test_kernels_compile_where_numba_cannot_keep_a_disk_cache(monkeypatch):
    # a read-only install without a writable user cache: numba refuses cache=True at decoration; compile without
    import medad_monai.networks.numba_jit as numba_jit

    real = numba_jit.numba.njit

    def refusing(*args, **options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'add_one': no locator available for file '/ro/x.py'")
        return real(*args, **options)

    monkeypatch.setattr(numba_jit.numba, "njit", refusing)

    def add_one(x):
        return x + 1

    assert numba_jit.jit()(add_one)(1) == 2
