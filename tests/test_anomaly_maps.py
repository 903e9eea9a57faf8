"""Tests for medad_monai.anomaly_maps (cosine maps, multi-scale combination, Gaussian smoothing, scores)."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from medad_monai.anomaly_maps import (
    AnomalyMapGenerator,
    GaussianBlur2d,
    cosine_distance_map,
    gaussian_kernel1d,
    multiscale_anomaly_map,
)
from medad_monai.scores import image_score


def _script(obj):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.export, still supported
        return torch.jit.script(obj)


def test_kernel_matches_scipy_size():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 2 * int(4 * 4.0 + 0.5) + 1 == 33
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert GaussianBlur2d(4.0).radius == 16


@pytest.mark.parametrize("scripted", [False, True])
def test_blur_matches_scipy(scripted):
    torch.manual_seed(0)
    blur = GaussianBlur2d(4.0)
    if scripted:
        blur = _script(blur)
    x = torch.rand(2, 1, 64, 50)
    y = blur(x)
    for i in range(2):
        ref = gaussian_filter(x[i, 0].double().numpy(), sigma=4)  # scipy defaults: mode='reflect', truncate=4
        np.testing.assert_allclose(y[i, 0].numpy(), ref, atol=1e-5, rtol=0)


def test_blur_small_image_larger_than_kernel_radius():
    # radius 16 > image size: scipy folds the reflection repeatedly, so must we
    x = torch.rand(1, 1, 9, 5)
    ref = gaussian_filter(x[0, 0].double().numpy(), sigma=4)
    np.testing.assert_allclose(GaussianBlur2d(4.0)(x)[0, 0].numpy(), ref, atol=1e-5, rtol=0)


def test_blur_is_per_image_and_per_channel():
    torch.manual_seed(1)
    blur = GaussianBlur2d(4.0)
    x = torch.rand(4, 2, 32, 32)
    batched = blur(x)
    one_by_one = torch.cat([blur(x[i : i + 1, c : c + 1]) for i in range(4) for c in range(2)]).view(4, 2, 32, 32)
    torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=0)
    # An impulse in one image must not leak into its neighbours.
    z = torch.zeros(3, 1, 16, 16)
    z[1, 0, 8, 8] = 1.0
    out = blur(z)
    assert out[0].abs().max() == 0 and out[2].abs().max() == 0 and out[1].sum() > 0.99


def test_blur_sigma_zero_is_identity_and_rejects_3d():
    x = torch.rand(1, 1, 8, 8)
    assert torch.equal(GaussianBlur2d(0.0)(x), x)
    with pytest.raises(ValueError, match="B, C, H, W"):
        GaussianBlur2d(4.0)(torch.rand(1, 8, 8))


def test_cosine_distance_map_hand_values():
    a = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1) * torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)
    b = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]).t().reshape(1, 3, 1, 2)
    m = cosine_distance_map(a, b)
    assert m.shape == (1, 1, 1, 2)
    torch.testing.assert_close(m.flatten(), torch.tensor([0.0, 2.0]))
    e = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    f = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(cosine_distance_map(e, f).flatten(), torch.tensor([1 - 1 / math.sqrt(2)]))


@pytest.mark.parametrize("mode", ["sum", "mean", "product"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_multiscale_map_combination(mode, align_corners):
    torch.manual_seed(2)
    fa = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]
    fb = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]
    maps = [
        torch.nn.functional.interpolate(
            cosine_distance_map(a, b), size=(16, 16), mode="bilinear", align_corners=align_corners
        )
        for a, b in zip(fa, fb)
    ]
    expected = {"sum": maps[0] + maps[1], "mean": (maps[0] + maps[1]) / 2, "product": maps[0] * maps[1]}[mode]
    out = multiscale_anomaly_map(fa, fb, [16, 16], mode=mode, align_corners=align_corners)
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out, expected)


def test_multiscale_map_errors():
    f = [torch.rand(1, 2, 4, 4)]
    with pytest.raises(ValueError, match="mode"):
        multiscale_anomaly_map(f, f, [8, 8], mode="max")
    with pytest.raises(ValueError, match="equal length"):
        multiscale_anomaly_map(f, f + f, [8, 8])


def test_generator_scripted_matches_eager():
    torch.manual_seed(3)
    gen = AnomalyMapGenerator(mode="sum", sigma=4.0, align_corners=True)
    fa = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]
    fb = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)]
    eager = gen(fa, fb, [32, 32])
    torch.testing.assert_close(_script(gen)(fa, fb, [32, 32]), eager, atol=1e-6, rtol=0)
    raw = multiscale_anomaly_map(fa, fb, [32, 32], "sum", True)
    torch.testing.assert_close(eager, GaussianBlur2d(4.0)(raw))
    torch.testing.assert_close(_script(image_score)(eager, "max"), image_score(eager))
