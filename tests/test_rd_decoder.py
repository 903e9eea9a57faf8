"""Tests for medad_monai.networks.rd_decoder (reverse-distillation student decoder)."""

import math
import warnings

import pytest
import torch
from torch import nn

from medad_monai.networks.rd_decoder import DeBottleneck, ReverseDistillationDecoder


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return ReverseDistillationDecoder().eval()


@pytest.mark.parametrize("image_size", [64, 128])
def test_wide_decoder_shapes(decoder, image_size):
    s = image_size // 32  # teacher layer4 resolution
    with torch.no_grad():
        feats = decoder(torch.rand(2, 2048, s, s))
    assert decoder.out_channels == (256, 512, 1024)
    assert [tuple(f.shape) for f in feats] == [(2, 256, 8 * s, 8 * s), (2, 512, 4 * s, 4 * s), (2, 1024, 2 * s, 2 * s)]


def test_de_wide_resnet50_2_structure(decoder):
    assert [len(stage) for stage in decoder.stages] == [3, 4, 6]
    first = decoder.stages[0][0]
    assert isinstance(first, DeBottleneck)
    # wide: width = planes * 128 / 64 = 2 * 256
    assert first.conv1.out_channels == 512
    assert (
        isinstance(first.conv2, nn.ConvTranspose2d)
        and first.conv2.stride == (2, 2)
        and first.conv2.kernel_size == (2, 2)
    )
    assert isinstance(first.upsample[0], nn.ConvTranspose2d) and first.upsample[0].stride == (2, 2)
    later = decoder.stages[0][1]
    assert isinstance(later.conv2, nn.Conv2d) and later.conv2.kernel_size == (3, 3) and later.upsample is None


def test_initialisation(decoder):
    conv = decoder.stages[0][1].conv2  # 3x3, 512 -> 512
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - math.sqrt(2.0 / fan_out)) < 0.05 * math.sqrt(2.0 / fan_out)
    assert torch.all(decoder.stages[1][0].bn1.weight == 1) and torch.all(decoder.stages[1][0].bn1.bias == 0)


def test_configurable_small_decoder():
    dec = ReverseDistillationDecoder(in_channels=512, num_blocks=(1, 2), width_per_group=64)
    feats = dec(torch.rand(1, 512, 3, 3))
    assert dec.out_channels == (128, 256)
    assert [tuple(f.shape) for f in feats] == [(1, 128, 12, 12), (1, 256, 6, 6)]
    with pytest.raises(ValueError, match="divisible"):
        ReverseDistillationDecoder(in_channels=100, num_blocks=(1, 1))
    with pytest.raises(ValueError, match="positive"):
        ReverseDistillationDecoder(num_blocks=(1, 0, 1))


def test_priors_are_added_to_stage_inputs():
    torch.manual_seed(1)
    dec = ReverseDistillationDecoder(in_channels=512, num_blocks=(1, 1, 1), width_per_group=64).eval()
    x = torch.rand(2, 512, 2, 2)
    p0 = torch.rand(2, 512, 2, 2)
    p2 = torch.rand(2, 128, 8, 8)
    with torch.no_grad():
        plain = dec(x)
        assert all(torch.equal(a, b) for a, b in zip(plain, dec(x, [None, None, None])))
        out = dec(x, [p0, None, p2])
        h0 = dec.stages[0](x + p0)
        h1 = dec.stages[1](h0)
        h2 = dec.stages[2](h1 + p2)
    for got, want in zip(out, [h2, h1, h0]):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="priors"):
        dec(x, [None])


def test_scripted_decoder_matches_eager():
    torch.manual_seed(2)
    dec = ReverseDistillationDecoder(in_channels=512, num_blocks=(1, 2), width_per_group=64).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(dec)
    x = torch.rand(1, 512, 2, 2)
    prior = torch.rand(1, 256, 4, 4)
    with torch.no_grad():
        for priors in (None, [None, prior]):
            for got, want in zip(scripted(x, priors), dec(x, priors)):
                torch.testing.assert_close(got, want)
