"""Mixed precision (the bundles' ``amp`` key) and channels-last memory format (``channels_last``): the configs wire
them to every inferer; channels-last leaves the values as they were (within float32 rounding); on CPU (bfloat16
autocast) maps, scores and a training loss stay within the stated tolerances of float32: image scores and every map
value within 10% of the float32 map's largest value (measured on these untrained networks: DDAD 0.4%, PDD 0.1%,
D²4FAD 6%), the PDD training loss within 1%, outputs always float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medad_monai.engines.steps import MethodInferer

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
TINY = {
    "ddad": {"num_members": 2, "image_size": 64},
    "pdd": {"image_size": 64, "decoder_blocks": [1, 1, 1], "wrn_weights": "random", "vmamba_weights": "random"},
    "d24fad": {"image_size": 64, "teacher_weights": "random"},
}
CHANNELS = {"ddad": 1, "pdd": 3, "d24fad": 3}


def _parser(bundle: str, config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    files = [BUNDLES / bundle / "configs" / "train.json"] if config == "evaluate.json" else []
    parser.read_config([str(f) for f in [*files, BUNDLES / bundle / "configs" / config]])
    for k, v in {**TINY[bundle], **overrides}.items():
        parser[k] = v
    return parser


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_the_amp_key_reaches_every_inferer_of_the_bundle(bundle):
    for config, inferer_ids in (
        ("inference.json", ["inferer"]),
        ("evaluate.json", ["evaluate#inferer"]),
        ("train.json", ["train#inferer"]),
    ):
        assert _parser(bundle, config)["amp"] is False  # off by default: float32 results as before
        assert _parser(bundle, config)["channels_last"] is False
        parser = _parser(bundle, config, amp=True, amp_dtype="float16", channels_last=True)
        for inferer_id in inferer_ids:
            inferer = parser.get_parsed_content(inferer_id)
            assert isinstance(inferer, MethodInferer) and inferer.amp and inferer.amp_dtype == "float16", config
            assert inferer.channels_last, config


def _served_network(bundle: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The bundle's inference network at the tiny settings (D²4FAD with a support set stored) and three inputs."""
    torch.manual_seed(0)
    net = _parser(bundle, "inference.json").get_parsed_content("network_def").eval()
    if bundle == "d24fad":
        net.set_support(torch.rand(net.num_support, 3, 64, 64))
    return net, torch.rand(3, CHANNELS[bundle], 64, 64)


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_bfloat16_maps_and_scores_stay_close_to_float32_on_cpu(bundle):
    net, x = _served_network(bundle)
    with torch.no_grad():
        full = MethodInferer("forward")(x, net)
        mixed = MethodInferer("forward", amp=True)(x, net)
    assert mixed.dtype == torch.float32 and mixed.shape == full.shape
    assert not torch.equal(mixed, full)  # the forward did run in bfloat16
    reduce = torch.amax if bundle != "ddad" else torch.mean  # the bundles' image scores
    s_full, s_mixed = reduce(full, dim=(1, 2, 3)), reduce(mixed, dim=(1, 2, 3))
    scale = full.abs().amax()  # untrained networks: D²4FAD's cosine distances are ~0.005, DDAD's maps nearly flat
    assert (s_mixed - s_full).abs().amax() / scale < 0.1, (s_full, s_mixed)
    error = (mixed - full).abs().amax() / scale
    assert error < 0.1, error


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_channels_last_changes_the_layout_not_the_values(bundle):
    net, x = _served_network(bundle)
    with torch.no_grad():
        full = MethodInferer("forward")(x, net)
        last = MethodInferer("forward", channels_last=True)(x, net)
    convs = [p for p in net.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert last.shape == full.shape
    # the same arithmetic in another order: equal up to float32 rounding
    assert (last - full).abs().amax() <= 1e-5 * max(1.0, full.abs().amax().item())


def test_pdd_training_loss_under_bfloat16_is_within_one_percent():
    torch.manual_seed(0)
    parser = _parser("pdd", "train.json")
    net, loss = parser.get_parsed_content("network_def").train(), parser.get_parsed_content("loss")
    x = torch.rand(4, 3, 64, 64)
    full = loss(MethodInferer("training_outputs")(x, net), None)
    mixed = loss(MethodInferer("training_outputs", amp=True)(x, net), None)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=0.01, atol=0.0)
    mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_a_bad_amp_dtype_is_named():
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        MethodInferer("forward", amp=True, amp_dtype="int8")
