"""DDAD networks: parameter count, score formulas against hand-computed values, ASR-Net, TorchScript parity."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medad_monai.losses.autoencoder import EnsembleReconstructionLoss, member_loss
from medad_monai.losses.focal import RefinementLoss, focal_loss
from medad_monai.networks.autoencoders import AE, AEEnsemble, MemAE, MemoryUnit, build_backbone
from medad_monai.networks.ddad import DDAD, OUTPUT_MAPS, ASRNet, MonotoneASRNet


class _Fixed(nn.Module):
    """Stands in for an ensemble: returns a fixed (B, K, C, H, W) output."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(x.shape[0], *self.out.shape[1:])


def _members(*values: float, size: int = 16) -> torch.Tensor:
    """(1, K, C, H, W) with member k's channel c constant values[k][c]."""
    return torch.tensor(values, dtype=torch.float32).view(1, len(values), -1, 1, 1).expand(-1, -1, -1, size, size)


def test_default_ae_has_the_papers_parameter_count():
    # MedIA 2023 §4.2: "about 4.49 M parameters"
    n = sum(p.numel() for p in AE().parameters())
    assert 4.48e6 < n < 4.50e6
    assert AE(uncertainty=True)(torch.zeros(2, 1, 64, 64)).shape == (2, 2, 64, 64)
    assert build_backbone("memae")(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_memory_addressing_weights_are_a_distribution():
    unit = MemoryUnit(mem_dim=25, fea_dim=16, shrink_thres=0.0025)
    out, att = unit(torch.randn(5, 16))
    assert out.shape == (5, 16) and att.shape == (5, 25)
    assert torch.allclose(att.sum(1), torch.ones(5), atol=1e-5)
    assert (att >= 0).all()


def test_backbone_losses():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    for name, model in (("ae", AE()), ("ae-u", AE(uncertainty=True)), ("memae", MemAE())):
        out = model.training_outputs(x)
        loss, terms = member_loss(name, out["output"], x, out.get("attention"))
        assert loss.ndim == 0 and torch.isfinite(loss) and "rec" in terms
        if name == "ae":  # hand-computed: the mean squared error
            assert loss.item() == pytest.approx(((out["output"] - x) ** 2).mean().item(), rel=1e-6)
        if name == "ae-u":  # MedIA 2023 Eq. 9 on the (mean, log variance) channels
            mean, logvar = out["output"][:, :1], out["output"][:, 1:]
            ref = (torch.exp(-logvar) * (mean - x) ** 2).mean() + logvar.mean()
            assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        if name == "memae":
            att = out["attention"]
            entropy = -(att * torch.log(att + 1e-12)).sum(1).mean()
            assert loss.item() == pytest.approx((terms["rec"] + 0.0002 * entropy).item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown DDAD backbone"):
        build_backbone("vae")
    with pytest.raises(ValueError, match="unknown DDAD backbone"):
        EnsembleReconstructionLoss("vae")


def test_ensemble_loss_sums_member_losses_on_their_own_images():
    torch.manual_seed(0)
    ens = AEEnsemble(num_members=2, backbone="ae")
    x = torch.rand(3, 2, 1, 64, 64)
    criterion = EnsembleReconstructionLoss("ae")
    loss = criterion(ens.training_outputs(x))
    ref = sum(F.mse_loss(m(x[:, k]), x[:, k]) for k, m in enumerate(ens.members))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert set(criterion.terms) == {"loss", "rec"} and criterion.terms["rec"].item() == pytest.approx(ref.item() / 2)
    with pytest.raises(ValueError, match="expected images"):
        ens.training_outputs(torch.rand(3, 1, 64, 64))


def test_scores_plain_ae_hand_computed():
    model = DDAD(backbone="ae", num_members=2, image_size=16).eval()
    model.ndm = _Fixed(_members([0.0], [1.0]))
    model.udm = _Fixed(_members([0.2], [0.4]))
    x = torch.ones(1, 1, 16, 16)
    maps = model.discrepancy_maps(x)
    assert set(maps) == {"rec", "intra"}  # no UDM trained yet
    assert torch.allclose(maps["rec"], torch.full((1, 1, 16, 16), 0.25))  # (1 - 0.5)^2
    assert torch.allclose(maps["intra"], torch.full((1, 1, 16, 16), math.sqrt(0.5)))  # unbiased std of {0, 1}
    model.has_udm.fill_(True)
    maps = model.discrepancy_maps(x)
    assert torch.allclose(maps["inter"], torch.full((1, 1, 16, 16), 0.2))  # |0.5 - 0.3|


def test_scores_ae_u_normalised_by_ndm_variance():
    model = DDAD(backbone="ae-u", num_members=2, image_size=16).eval()
    # channel 0: reconstruction, channel 1: log variance; NDM variances 2 and 6 -> mean 4
    model.ndm = _Fixed(_members([0.0, math.log(2.0)], [1.0, math.log(6.0)]))
    model.udm = _Fixed(_members([0.2, 0.0], [0.4, 0.0]))
    model.has_udm.fill_(True)
    maps = model.discrepancy_maps(torch.ones(1, 1, 16, 16))
    assert maps["rec"].mean().item() == pytest.approx(0.25 / 4)
    assert maps["intra"].mean().item() == pytest.approx(math.sqrt(0.5) / 2)
    assert maps["inter"].mean().item() == pytest.approx(0.2 / 2)
    scores = model.image_scores(torch.ones(3, 1, 16, 16))
    assert set(scores) == {"rec", "intra", "inter", "r_intra", "r_dual"}
    assert all(v.shape == (3,) for v in scores.values())
    assert scores["rec"][0].item() == pytest.approx(0.0625)


def test_forward_serves_r_dual_with_udm_else_r_intra():
    model = DDAD(backbone="ae", num_members=2, image_size=64).eval()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), model.all_maps(x)["r_intra"])
        assert model.score_names() == ["rec", "intra", "r_intra"]
        model.has_udm.fill_(True)
        assert torch.allclose(model(x), model.all_maps(x)["r_dual"])
    out = model(x)
    assert out.shape == (2, 1, 64, 64) and ((out >= 0) & (out <= 1)).all()


def test_asr_net_architecture():
    net = ASRNet(2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (2, 128, (3, 3)),
        (128, 128, (3, 3)),
        (128, 2, (3, 3)),
    ]
    assert net(torch.zeros(1, 2, 64, 64)).shape == (1, 2, 64, 64)


def test_refinement_freezes_ensembles_and_trains_asr():
    model = DDAD(backbone="ae-u", num_members=2, image_size=64)
    model.has_udm.fill_(True)
    model.train()
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 20:30, 20:30] = 1
    logits = model.refinement_outputs(x)
    criterion = RefinementLoss()
    loss = criterion(logits, mask)
    loss.backward()
    assert not model.ndm.training and not model.udm.training
    assert all(p.grad is None for p in model.ndm.parameters())
    assert all(p.grad is not None for p in model.asr_dual.parameters())
    assert set(criterion.terms) == {"loss", "focal_r_intra", "focal_r_dual"}
    expected = focal_loss(logits["r_intra"], mask) + focal_loss(logits["r_dual"], mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="synthetic anomaly mask"):
        criterion(logits, None)


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"DDAD expects images \(B, 1, 64, 64\)"):
        DDAD(num_members=2)(torch.zeros(1, 3, 64, 64))


def test_torchscript_matches_eager():
    model = DDAD(num_members=2).eval()
    model.has_udm.fill_(True)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_output_map_option_serves_an_unrefined_score():
    model = DDAD(backbone="ae", num_members=2, image_size=16, output_map="inter").eval()
    model.ndm = _Fixed(_members([0.0], [1.0]))
    model.udm = _Fixed(_members([0.2], [0.4]))
    x = torch.ones(1, 1, 16, 16)
    assert torch.allclose(model(x), torch.full((1, 1, 16, 16), math.sqrt(0.5)))  # no UDM yet: A_intra
    model.has_udm.fill_(True)
    assert torch.allclose(model(x), torch.full((1, 1, 16, 16), 0.2))  # A_inter
    with pytest.raises(ValueError, match="output_map must be one of"):
        DDAD(output_map="best")


def test_monotone_asr_net_never_lowers_the_probability_when_a_discrepancy_rises():
    torch.manual_seed(0)
    net = MonotoneASRNet(2, mid_channels=16)
    for mode in (True, False):  # batch statistics and running statistics
        net.train(mode)
        base = torch.rand(4, 2, 24, 24)
        bump = torch.zeros_like(base)
        bump[:, 0, 8:16, 8:16] = torch.rand(4, 8, 8) * 5
        with torch.no_grad():
            if mode:  # same batch statistics for both calls: compare inside one batch
                logits = net(torch.cat([base, base + bump]))
                p0, p1 = torch.softmax(logits, 1)[:, 1].chunk(2)
            else:
                p0, p1 = (torch.softmax(net(x), 1)[:, 1] for x in (base, base + bump))
        assert (p1 >= p0 - 1e-6).all()
        assert (p1 > p0 + 1e-4).any()
    weights = [F.softplus(m.raw_weight) for m in net.modules() if hasattr(m, "raw_weight")]
    assert len(weights) == 3 and all((w > 0).all() for w in weights)


def test_saturating_refinement_input_is_fitted_on_normals_and_bounded():
    model = DDAD(backbone="ae", num_members=2, image_size=16, refine_input="saturate").eval()
    maps = {"inter": torch.arange(100.0).view(1, 1, 10, 10), "intra": torch.full((1, 1, 10, 10), 2.0)}
    model.fit_refinement_input(maps, quantile=0.5)
    assert model.input_scale.tolist() == pytest.approx([49.5, 2.0])
    inputs = model.refinement_inputs({"inter": torch.full((1, 1, 4, 4), 49.5), "intra": torch.full((1, 1, 4, 4), 1e6)})
    assert torch.allclose(inputs["dual"][:, 0], torch.full((1, 4, 4), 0.5))  # x / (x + q) at x = q
    assert ((inputs["dual"] >= 0) & (inputs["dual"] < 1)).all()
    with pytest.raises(ValueError, match="refine_input must be one of"):
        DDAD(refine_input="log")
    with pytest.raises(ValueError, match="refinement must be one of"):
        DDAD(refinement="crf")


def test_served_map_is_a_buffer_that_travels_with_the_state_dict_and_torchscript():
    model = DDAD(backbone="ae", num_members=2, image_size=16, output_map="auto").eval()
    model.ndm = _Fixed(_members([0.0], [1.0]))
    model.udm = _Fixed(_members([0.2], [0.4]))
    model.has_udm.fill_(True)
    assert model.served_map_name() == "refined"
    model.set_served_map("inter")
    x = torch.ones(1, 1, 16, 16)
    assert torch.allclose(model(x), torch.full((1, 1, 16, 16), 0.2))  # A_inter
    fresh = DDAD(backbone="ae", num_members=2, image_size=16)
    fresh.load_state_dict(
        DDAD(backbone="ae", num_members=2, image_size=16, output_map="auto").state_dict()
        | {"served_map": model.served_map.clone()}
    )
    assert fresh.served_map_name() == "inter"
    with pytest.raises(ValueError, match="served map must be one of"):
        model.set_served_map("auto")


def test_torchscript_matches_eager_for_every_option():
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    for kwargs in ({"refinement": "monotone", "refine_input": "saturate"}, {"output_map": "rec"}):
        model = DDAD(num_members=2, **kwargs).eval()
        model.has_udm.fill_(True)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), model(x), atol=1e-6), kwargs


def test_auto_selection_judges_each_score_on_images_its_models_never_saw():
    from medad_monai.engines.ddad import select_served_map

    torch.manual_seed(0)
    model = DDAD(backbone="ae", num_members=2, image_size=64, output_map="auto").eval()
    model.has_udm.fill_(True)

    def images(n: int, offset: float = 0.0) -> list[dict]:
        return [{"image": (torch.rand(1, 64, 64) * 2 - 1 + offset).clamp(-1, 1)} for _ in range(n)]

    record = select_served_map(model, images(6), images(4, 0.3), pool_trained=images(5, 0.3))
    # the UDM saw the trained pool: its scores (inter, R_dual) are judged on the 4 held-out images only
    assert record["n_pool"] == {"refined": 4, "rec": 9, "intra": 9, "inter": 4} and record["n_normal"] == 6
    assert record["chosen"] in OUTPUT_MAPS and model.served_map_name() == record["chosen"]
    assert set(record["values"]) == {"refined", "rec", "intra", "inter"}


@pytest.mark.parametrize("served", ["refined", "rec", "intra", "inter"])
def test_evaluation_outputs_are_the_image_scores_and_the_served_map(served):
    torch.manual_seed(0)
    model = DDAD(backbone="ae", num_members=2, image_size=64).eval()
    model.has_udm.fill_(True)
    model.set_served_map(served)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        out = model.evaluation_outputs(x)
        scores = model.image_scores(x)
        assert set(out) == set(scores) | {"map"}
        for name, value in scores.items():
            assert torch.allclose(out[name], value)
        assert torch.allclose(out["map"], model(x))  # the map it serves, from the same pass
        model.has_udm.fill_(False)  # without a UDM: R_intra for "refined", A_intra for "inter", as forward does
        assert torch.allclose(model.evaluation_outputs(x)["map"], model(x))
