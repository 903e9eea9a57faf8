"""PDD building blocks and losses: InA/MMU/MPA shapes, hand-computed loss values (diversity hinges piecewise),
frozen teachers, weight resolution ("auto"), training step and TorchScript parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medad_monai.losses.diversity import DiversityLoss, diversity_loss, hinge_deep, hinge_shallow
from medad_monai.losses.feature_regression import level_cosine, level_mse
from medad_monai.losses.pdd import PDDLoss
from medad_monai.networks import pdd as pdd_module
from medad_monai.networks import weights as weights_module
from medad_monai.networks.architecture import ArchitectureMismatchError
from medad_monai.networks.pdd import PDD, ChannelAdapter, ManifoldPriorAffine, fuse, resolve_vmamba_weights

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
    a = [torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0]], [[2.0]]]])]  # shapes (1,1,1,2) and (1,2,1,1)
    b = [torch.tensor([[[[0.0, 0.0]]]]), torch.tensor([[[[1.0]], [[2.0]]]])]
    # level 0: mean((1,0)^2) = 0.5; level 1: mean((-1,0)^2) = 0.5
    assert float(level_mse(a, b)) == pytest.approx(1.0)
    # level 0: cos((1,0),(0,0)) = 0 (zero vector, eps); level 1: cos((0,2),(1,2)) = 4 / (2 sqrt 5)
    assert float(level_cosine(a, b)) == pytest.approx(2 / math.sqrt(5), rel=1e-6)
    with pytest.raises(ValueError, match="shape mismatch"):
        level_mse([torch.ones(1, 2, 1, 1)], [torch.ones(1, 3, 1, 1)])


# ---------------------------------------------------------------------------------------------------- modules
def test_channel_adapter_matches_the_official_layout():
    adapter = ChannelAdapter(192, 256, reduction=4).eval()
    convs = [m for m in adapter.body if isinstance(m, torch.nn.Conv2d)]
    # mid = max(192 // 4, 256 // 4) = 64; the 3x3 conv is dilated by 2 (padding 2), no biases
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (192, 64, (1, 1), (1, 1)),
        (64, 64, (3, 3), (2, 2)),
        (64, 256, (1, 1), (1, 1)),
    ]
    x = torch.randn(2, 192, 8, 8)
    torch.testing.assert_close(adapter(x), torch.nn.functional.gelu(adapter.body(x) + adapter.residual(x)))
    assert isinstance(ChannelAdapter(768, 768).residual, torch.nn.Identity)


def test_mpa_priors_are_resized_to_the_decoder_stage_inputs():
    mpa = ManifoldPriorAffine(2048, (1024, 512)).eval()
    priors = mpa(torch.randn(2, 2048, 2, 2), [[4, 4], [8, 8]])
    assert [tuple(p.shape) for p in priors] == [(2, 1024, 4, 4), (2, 512, 8, 8)]


def test_model_features_forward_and_threshold(model):
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        targets, s_prior, s_plain = model.features(x)
        amap = model(x)
    shapes = [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4)]
    assert [tuple(f.shape) for f in targets] == shapes
    assert [tuple(f.shape) for f in s_prior] == shapes and [tuple(f.shape) for f in s_plain] == shapes
    # one shared decoder on one input: the deepest level (no prior yet) is identical for both students
    torch.testing.assert_close(s_prior[2], s_plain[2])
    assert not torch.allclose(s_prior[0], s_plain[0])
    assert amap.shape == (2, 1, SIZE, SIZE) and amap.dtype == torch.float32 and torch.isfinite(amap).all()
    assert float(amap.min()) >= 0.0 and float(amap.max()) <= 12.0  # 2 students x 3 levels x (1 - cos) <= 2
    assert math.isnan(float(model.threshold)) and "threshold" in model.state_dict()
    with pytest.raises(ValueError, match="multiple of 32"):
        PDD(image_size=100, wrn_weights="random", vmamba_weights="random")


def test_inference_map_is_the_official_sum_of_cosine_distances(model):
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        targets, s_prior, s_plain = model.features(x)
        expected = torch.zeros(1, 1, SIZE, SIZE)
        for student in (s_prior, s_plain):
            for s, t in zip(student, targets):
                d = 1 - torch.nn.functional.cosine_similarity(s, t, dim=1)[:, None]
                expected += torch.nn.functional.interpolate(d, size=SIZE, mode="bilinear", align_corners=True)
        torch.testing.assert_close(model(x), model.blur(expected), atol=1e-5, rtol=1e-5)


def test_consistent_plain_map_leaves_the_plain_students_diverse_levels_out(model):
    torch.manual_seed(0)
    kw = {"image_size": SIZE, "wrn_weights": "random", "vmamba_weights": "random", "decoder_blocks": (1, 1, 1)}
    consistent = PDD(plain_map="consistent", diverse_levels=1, **kw).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        targets, s_prior, s_plain = consistent.features(x)
        expected = torch.zeros(1, 1, SIZE, SIZE)
        # every level of the prior student, the plain one's levels 2-3 (under the consistency hinge) only
        for s, t in [*zip(s_prior, targets), *zip(s_plain[1:], targets[1:])]:
            d = 1 - torch.nn.functional.cosine_similarity(s, t, dim=1)[:, None]
            expected += torch.nn.functional.interpolate(d, size=SIZE, mode="bilinear", align_corners=True)
        torch.testing.assert_close(consistent(x), consistent.blur(expected), atol=1e-5, rtol=1e-5)
    with pytest.raises(ArchitectureMismatchError, match="--plain_map consistent"):
        PDD(plain_map="all", **kw).load_state_dict(consistent.state_dict())
    with pytest.raises(ValueError, match="plain_map must be one of"):
        PDD(plain_map="some", **kw)


def test_teachers_frozen_and_stay_in_eval(model):
    model.train()
    try:
        assert not model.wrn.training and not model.vmamba.training and model.student.training
        assert not any(p.requires_grad for p in model.wrn.parameters())
        assert not any(p.requires_grad for p in model.vmamba.parameters())
        trainable = {id(p) for p in model.trainable_parameters()}
        assert trainable and all(id(p) in trainable for p in model.target_adapters.parameters())
        assert model.student_plain is model.student  # the official code shares the decoder
    finally:
        model.eval()


def test_training_outputs_and_the_loss_terms_and_gradients():
    torch.manual_seed(0)
    net = PDD(image_size=SIZE, wrn_weights="random", vmamba_weights="random", decoder_blocks=(1, 1, 1))
    net.train()
    x = torch.rand(2, 3, SIZE, SIZE)
    pred = net.training_outputs(x)
    assert set(pred) == {"targets", "prior", "plain"} and all(len(v) == 3 for v in pred.values())
    criterion = PDDLoss()
    loss = criterion(pred)
    out = criterion.terms
    assert set(out) == {"loss", "prior", "plain", "div"} and not out["loss"].requires_grad
    targets, s_prior, s_plain = pred["targets"], pred["prior"], pred["plain"]
    prior = 0.02 * level_mse(s_prior, targets) + 0.05 * level_cosine(s_prior, targets)  # official signs
    assert float(out["prior"]) == pytest.approx(float(prior), rel=1e-4)
    assert float(out["plain"]) == pytest.approx(float(0.02 * level_mse(targets, s_plain)), rel=1e-4)
    expected = out["prior"] + out["plain"] + 0.5 * out["div"]
    assert loss.item() == pytest.approx(float(expected), rel=1e-5) and loss.item() == float(out["loss"])
    loss.backward()
    assert net.mpa.branches[0].weight.grad is not None and net.target_adapters[0].body[0].weight.grad is not None
    assert all(p.grad is None for p in net.wrn.parameters()) and all(p.grad is None for p in net.vmamba.parameters())


def test_options_detached_targets_separate_students_and_paper_cosine():
    torch.manual_seed(0)
    net = PDD(
        image_size=SIZE,
        wrn_weights="random",
        vmamba_weights="random",
        decoder_blocks=(1, 1, 1),
        detach_targets=True,
        shared_decoder=False,
    ).train()
    assert not net.target_adapters.training and net.student_plain is not net.student
    x = torch.rand(2, 3, SIZE, SIZE)
    pred = net.training_outputs(x)
    paper = PDDLoss(prior_cosine="distance")
    paper(pred).backward()
    assert all(p.grad is None for p in net.target_adapters.parameters())  # fixed targets
    assert net.unify_adapter.body[0].weight.grad is not None  # the student input still learns
    targets, s_prior, _ = net.features(x)
    prior = 0.02 * level_mse(s_prior, targets) + 0.05 * (3 - level_cosine(s_prior, targets))
    assert float(paper.terms["prior"]) == pytest.approx(float(prior), rel=1e-4)
    rd_like = PDDLoss(
        prior_mse_weight=0.0, prior_cos_weight=1.0, prior_cosine="distance", plain_mse_weight=0.0, plain_cos_weight=1.0
    )
    with torch.no_grad():
        pred = net.training_outputs(x)
        rd_like(pred)
    targets, s_prior, s_plain = pred["targets"], pred["prior"], pred["plain"]
    # reverse distillation's loss: sum over levels of 1 - cos of the flattened maps, for both students
    assert float(rd_like.terms["prior"]) == pytest.approx(float(3 - level_cosine(s_prior, targets)), rel=1e-4)
    assert float(rd_like.terms["plain"]) == pytest.approx(float(3 - level_cosine(s_plain, targets)), rel=1e-4)
    with pytest.raises(ValueError, match="prior_cosine"):
        PDDLoss(prior_cosine="angle")
    with pytest.raises(ValueError, match="diverse_levels 4 exceeds"):
        PDDLoss(diverse_levels=4)(pred)


def test_normalized_fusion_weighs_both_teachers_equally_and_the_checkpoint_remembers_it():
    adapted = torch.tensor([[3.0, 4.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # per-pixel vectors (3, 4), (0, 2)
    resnet = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2)  # (0, 1), (1, 0)
    torch.testing.assert_close(fuse(adapted, resnet, "sum"), adapted + resnet)
    expected = torch.tensor([[0.6, 1.8], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (0.6, 0.8)+(0, 1), (0, 1)+(1, 0)
    torch.testing.assert_close(fuse(adapted, resnet, "normalized"), expected)
    coarse = torch.ones(1, 2, 1, 1)  # the VMamba term is one stride coarser: resampled to the ResNet grid first
    assert fuse(coarse, resnet, "sum").shape == resnet.shape
    torch.manual_seed(0)
    kw = {"image_size": SIZE, "wrn_weights": "random", "vmamba_weights": "random", "decoder_blocks": (1, 1, 1)}
    normalized = PDD(fusion="normalized", **kw)
    state = normalized.state_dict()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        targets, _, _ = normalized.eval().features(x)
        f_r, _ = normalized.teacher_features(x)
    assert all(t.norm(dim=1).max() <= 2.0 + 1e-5 for t in targets)  # a sum of two unit vectors
    assert not torch.allclose(targets[0], F.normalize(f_r[0], dim=1))  # the VMamba term is in the target
    with pytest.raises(ArchitectureMismatchError, match=r'trained with fusion="normalized".*--fusion normalized'):
        PDD(fusion="sum", **kw).load_state_dict(state)
    PDD(fusion="normalized", **kw).load_state_dict(state)  # the same option loads
    with pytest.raises(ArchitectureMismatchError, match=r"decoder_blocks=\[1, 1, 1\].*--decoder_blocks \[1,1,1\]"):
        PDD(fusion="normalized", **{**kw, "decoder_blocks": (2, 2, 2)}).load_state_dict(state)
    # a checkpoint from before the record (and the option) used the official sum
    legacy = {k: v for k, v in PDD(fusion="sum", **kw).state_dict().items() if k != "architecture"}
    PDD(fusion="sum", **kw).load_state_dict(legacy)
    with pytest.raises(ArchitectureMismatchError, match=r'trained with fusion="sum"'):
        PDD(fusion="normalized", **kw).load_state_dict(legacy)
    with pytest.raises(ValueError, match="fusion must be one of"):
        PDD(fusion="concat", **kw)


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

    def offline(file, dest):
        raise OSError("no network")

    monkeypatch.setattr(weights_module, "_download", offline)
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
    cached = tmp_path / "hub" / "checkpoints" / weights_module.VANILLA_VMAMBA_TINY.filename
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert resolve_vmamba_weights("auto")[0] == str(cached)
