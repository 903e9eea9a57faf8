"""PDD building blocks and losses: InA/MMU/MPA shapes, hand-computed loss values (diversity hinges piecewise),
frozen teachers, weight resolution ("auto"), training step and TorchScript parity."""

from __future__ import annotations

import math

import pytest
import torch

from medad_monai.losses.diversity import DiversityLoss, diversity_loss, hinge_deep, hinge_shallow
from medad_monai.losses.feature_regression import mse_cosine_loss, squared_error_loss
from medad_monai.networks import pdd as pdd_module
from medad_monai.networks.pdd import MMU, MPA, PDD, InA, ManifoldUnification, StudentBottleneck, resolve_vmamba_weights

SIZE = 64


@pytest.fixture(scope="module")
def model() -> PDD:
    torch.manual_seed(0)
    return PDD(image_size=SIZE, wrn_weights="random", vmamba_weights="random", decoder_blocks=(1, 1, 1)).eval()


# ------------------------------------------------------------------------------------------------------ losses
def _pair(cos_value: float, shape=(1, 2, 1, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature maps whose per-pixel channel cosine equals ``cos_value`` everywhere."""
    a = torch.zeros(shape)
    b = torch.zeros(shape)
    a[:, 0] = 1.0
    b[:, 0] = cos_value
    b[:, 1] = math.sqrt(1.0 - cos_value**2)
    return a, b


@pytest.mark.parametrize(
    "cos, shallow, deep",
    [
        (0.9, 0.9 - 0.75, 0.0),  # very similar: the shallow hinge is active, the deep one not
        (0.75, 0.0, 0.0),  # at tau_low: shallow hinge exactly zero
        (0.5, 0.0, 0.0),  # between the thresholds: both zero
        (0.3, 0.0, 0.0),  # at tau_high: deep hinge exactly zero
        (0.1, 0.0, 0.30 - 0.1),  # dissimilar: the deep hinge is active
        (-0.5, 0.0, 0.30 + 0.5),
    ],
)
def test_diversity_hinges_piecewise(cos, shallow, deep):
    assert float(hinge_shallow(torch.tensor(cos), 0.75)) == pytest.approx(shallow, abs=1e-7)
    assert float(hinge_deep(torch.tensor(cos), 0.30)) == pytest.approx(deep, abs=1e-7)
    a, b = _pair(cos)
    # one level treated as shallow, then as deep
    assert float(diversity_loss([a], [b], shallow_levels=(0,), deep_levels=())) == pytest.approx(shallow, abs=1e-6)
    assert float(diversity_loss([a], [b], shallow_levels=(), deep_levels=(0,))) == pytest.approx(deep, abs=1e-6)


def test_diversity_sums_levels_and_averages_pixels():
    # level 0 (shallow): half the pixels at cos 1 (hinge 0.25), half at cos 0 (hinge 0) -> mean 0.125
    a0 = torch.zeros(1, 2, 1, 2)
    a0[:, 0] = 1.0
    b0 = torch.zeros(1, 2, 1, 2)
    b0[0, 0, 0, 0] = 2.0  # cos 1 (scale does not matter)
    b0[0, 1, 0, 1] = 3.0  # cos 0
    # level 1 (ignored), level 2 (deep): cos -1 everywhere -> 0.3 + 1 = 1.3
    a1, b1 = _pair(0.0)
    a2, b2 = _pair(-1.0)
    loss = diversity_loss([a0, a1, a2], [b0, b1, b2], shallow_levels=(0,), deep_levels=(2,))
    assert float(loss) == pytest.approx(0.125 + 1.3, abs=1e-6)
    module = DiversityLoss(shallow_levels=(0,), deep_levels=(2,))
    assert float(module([a0, a1, a2], [b0, b1, b2])) == pytest.approx(0.125 + 1.3, abs=1e-6)
    # flattened (per image) variant: level-0 vectors [1,0,1,0] vs [2,0,0,3] -> cos = 2 / (sqrt2 * sqrt13)
    cos = 2.0 / (math.sqrt(2.0) * math.sqrt(13.0))
    flat = diversity_loss([a0], [b0], shallow_levels=(0,), deep_levels=(), per_pixel=False)
    assert float(flat) == pytest.approx(max(0.0, cos - 0.75), abs=1e-6)


def test_diversity_rejects_bad_levels():
    a, b = _pair(0.5)
    with pytest.raises(ValueError, match="both shallow and deep"):
        diversity_loss([a], [b], shallow_levels=(0,), deep_levels=(0,))
    with pytest.raises(ValueError, match="out of range"):
        diversity_loss([a], [b], shallow_levels=(1,), deep_levels=())


def test_diversity_gradient_pushes_shallow_apart():
    a, b = _pair(0.9)
    b.requires_grad_(True)
    diversity_loss([a], [b], shallow_levels=(0,), deep_levels=()).backward()
    # moving b along a's direction increases the cosine, so the gradient there is positive (descent lowers it)
    assert b.grad[0, 0, 0, 0] > 0


def test_feature_regression_hand_values():
    s = [torch.ones(1, 2, 1, 1), torch.zeros(1, 1, 2, 1)]
    t = [torch.tensor([[[[3.0]], [[1.0]]]]), torch.tensor([[[[1.0], [2.0]]]])]
    # level 0: errors (2, 0) -> mse 2; level 1: errors (1, 2) -> mse 2.5
    assert float(squared_error_loss(s, t)) == pytest.approx(4.5)
    # cosines: level 0 = (3 + 1) / (sqrt2 * sqrt10); level 1 student is zero -> cos 0 (eps floor)
    cos0 = 4.0 / (math.sqrt(2.0) * math.sqrt(10.0))
    expected = 0.5 * 4.5 + 2.0 * ((1 - cos0) + 1.0)
    assert float(mse_cosine_loss(s, t, alpha=0.5, beta=2.0)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="shape mismatch"):
        squared_error_loss([torch.ones(1, 2, 1, 1)], [torch.ones(1, 3, 1, 1)])


# ---------------------------------------------------------------------------------------------------- modules
def test_ina_and_mmu_shapes_and_formulas():
    f_m, f_r = torch.randn(2, 96, 8, 8), torch.randn(2, 256, 8, 8)
    ina = InA(96, 256).eval()
    assert ina(f_m, f_r).shape == (2, 256, 8, 8)
    torch.testing.assert_close(ina(f_m, f_r), ina.bn(ina.proj(f_m)) + f_r)
    # U(., S): a Mamba feature of another size is resampled to the ResNet feature's size
    assert ina(torch.randn(2, 96, 4, 4), f_r).shape == (2, 256, 8, 8)
    mmu = MMU(96, 256).eval()
    c1 = mmu.c1(f_m)
    torch.testing.assert_close(mmu(f_m, f_r), c1 + mmu.conv(torch.nn.functional.gelu(mmu.bn(c1))) + f_r)
    unify = ManifoldUnification(levels=(1,))
    f_ms = [torch.randn(1, c, s, s) for c, s in ((96, 16), (192, 8), (384, 4))]
    f_rs = [torch.randn(1, c, s, s) for c, s in ((256, 16), (512, 8), (1024, 4))]
    out = unify(f_ms, f_rs)
    assert out[0] is f_rs[0] and out[2] is f_rs[2] and out[1].shape == (1, 512, 8, 8)
    with pytest.raises(ValueError):
        ManifoldUnification(levels=(3,))


def test_mpa_priors_and_bottleneck_shapes():
    f_t = [torch.randn(2, c, s, s) for c, s in ((256, 16), (512, 8), (1024, 4))]
    priors = MPA(stages=(1, 2))(f_t)
    assert priors[0] is None and priors[1].shape == (2, 1024, 4, 4) and priors[2].shape == (2, 512, 8, 8)
    # zero-initialised: Student 2 starts as a plain RD decoder
    assert all(float(p.detach().abs().max()) == 0.0 for p in priors[1:])
    assert MPA(stages=(2,), zero_init=False)(f_t)[1] is None
    with pytest.raises(ValueError):
        MPA(stages=(0,))
    for mode in ("deepest", "all"):
        assert StudentBottleneck(mode)(f_t).shape == (2, 2048, 2, 2)


def test_model_features_forward_and_threshold(model):
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        f_b, s1, s2 = model.features(x)
        amap = model(x)
    shapes = [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4)]
    assert [tuple(f.shape) for f in f_b] == shapes
    assert [tuple(f.shape) for f in s1] == shapes and [tuple(f.shape) for f in s2] == shapes
    assert amap.shape == (2, 1, SIZE, SIZE) and amap.dtype == torch.float32 and torch.isfinite(amap).all()
    assert float(amap.min()) >= 0.0 and float(amap.max()) <= 12.0  # 2 students x 3 levels x (1 - cos) <= 2
    assert math.isnan(float(model.threshold)) and "threshold" in model.state_dict()
    with pytest.raises(ValueError, match="multiple of 32"):
        PDD(image_size=100, wrn_weights="random", vmamba_weights="random")


def test_teachers_frozen_and_stay_in_eval(model):
    model.train()
    try:
        assert not model.wrn.training and not model.vmamba.training and model.student1.training
        assert not any(p.requires_grad for p in model.wrn.parameters())
        assert not any(p.requires_grad for p in model.vmamba.parameters())
        trainable = {id(p) for p in model.trainable_parameters()}
        assert trainable and all(id(p) in trainable for p in model.student2.parameters())
        assert all(id(p) in trainable for p in model.ina.parameters())
    finally:
        model.eval()


def test_training_step_terms_and_gradients():
    torch.manual_seed(0)
    net = PDD(
        image_size=SIZE,
        wrn_weights="random",
        vmamba_weights="random",
        decoder_blocks=(1, 1, 1),
        diversity_weight=0.5,
        kr_weight=2.0,
    )
    net.train()
    out = net.training_step(torch.rand(2, 3, SIZE, SIZE))
    assert set(out) == {"loss", "kr", "prp", "div"}
    expected = 2.0 * out["kr"] + out["prp"] + 0.5 * out["div"]
    assert out["loss"].item() == pytest.approx(float(expected.detach()), rel=1e-5)
    out["loss"].backward()
    assert net.mpa.affines[0].weight.grad is not None and net.ina[0].proj.weight.grad is not None
    assert all(p.grad is None for p in net.wrn.parameters()) and all(p.grad is None for p in net.vmamba.parameters())


def test_torchscript_equals_eager(model):
    scripted = torch.jit.script(model)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (scripted(x) - model(x)).abs().max().item() <= 1e-5
    assert math.isnan(float(scripted.threshold))


def test_vmamba_weights_resolution(tmp_path, monkeypatch):
    assert resolve_vmamba_weights("random") == (None, "random initialisation")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(pdd_module.VMAMBA_WEIGHTS_ENV, raising=False)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        path, description = resolve_vmamba_weights("auto")
    assert path is None and "random" in description
    ckpt = tmp_path / "vmamba.pth"
    ckpt.write_bytes(b"")
    monkeypatch.setenv(pdd_module.VMAMBA_WEIGHTS_ENV, str(ckpt))
    assert resolve_vmamba_weights("auto")[0] == str(ckpt)
    monkeypatch.setenv(pdd_module.VMAMBA_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="MEDAD_VMAMBA_WEIGHTS"):
        resolve_vmamba_weights("auto")
    monkeypatch.delenv(pdd_module.VMAMBA_WEIGHTS_ENV)
    cached = tmp_path / "hub" / "checkpoints" / pdd_module.VMAMBA_TINY_CHECKPOINT_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_vmamba_weights("auto")[0] == str(cached)
