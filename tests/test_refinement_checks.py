"""Label-free checks and choices: pool separation, score selection, pixel separation and the refinement probe."""

import numpy as np
import pytest
import torch
from torch import nn

from medad_monai.metrics.refinement_checks import disc_mask, is_non_decreasing, pixel_separation, probe_response
from medad_monai.metrics.score_selection import pool_separation, select_score
from medad_monai.networks.ddad import MonotoneASRNet


def test_pool_separation_is_the_auroc_of_pool_against_normals():
    normal = {"a": np.array([0.1, 0.2, 0.3]), "b": np.array([1.0, 2.0, 3.0])}
    pool = {"a": np.array([0.25, 0.9]), "b": np.array([0.5, 0.6]), "c": np.array([1.0, 2.0])}
    # a: 0.25 beats 0.1, 0.2 (2 of 3), 0.9 beats all 3 -> 5/6; b: nothing beaten -> 0; c: no normal scores -> absent
    assert pool_separation(normal, pool) == pytest.approx({"a": 5 / 6, "b": 0.0})
    with pytest.raises(ValueError, match="both the normal and the pool"):
        pool_separation({"a": np.array([])}, {"a": np.array([1.0])})


def test_select_score_breaks_ties_by_order_and_falls_back_below_chance():
    order = ("refined", "rec", "intra", "inter")
    assert select_score({"rec": 0.8, "inter": 0.9, "refined": 0.7}, order, "refined") == "inter"
    assert select_score({"rec": 0.9, "inter": 0.9}, order, "refined") == "rec"  # tie: the earlier name
    assert select_score({"rec": 0.5, "inter": 0.4}, order, "refined") == "refined"  # nothing beats chance
    assert select_score({"rec": float("nan")}, order, "refined") == "refined"


def test_pixel_separation_against_hand_computed_masks():
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    maps = {"good": torch.tensor([[[[4.0, 1.0], [2.0, 3.0]]]]), "bad": torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])}
    assert pixel_separation(maps, mask) == pytest.approx({"good": 1.0, "bad": 0.0})
    assert np.isnan(pixel_separation(maps, torch.zeros(1, 1, 2, 2))["good"])


def test_is_non_decreasing_with_tolerance():
    assert is_non_decreasing([0.1, 0.1, 0.5, 0.49, 0.9])
    assert not is_non_decreasing([0.1, 0.6, 0.3])  # the DDAD failure: P falls above the training range
    assert is_non_decreasing([0.1, 0.6, 0.3], tolerance=0.5)


class _BumpDetector(nn.Module):
    """A refinement that likes moderate discrepancies and calls large ones normal (non-monotone)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((x[:, :1] - 1.0) ** 2))


def test_probe_flags_a_refinement_that_calls_large_discrepancies_normal():
    background = torch.zeros(3, 2, 32, 32)
    scale = torch.tensor([1.0, 1.0])
    probe = probe_response(_BumpDetector(), background, scale, levels=(0.0, 1.0, 4.0))
    assert probe[1] == pytest.approx(1.0) and probe[2] < 0.01  # peaks at 1 x scale, falls to ~0 at 4 x
    assert not is_non_decreasing(probe)
    torch.manual_seed(0)
    monotone = MonotoneASRNet(2, mid_channels=8).eval()
    rising = probe_response(lambda x: torch.softmax(monotone(x), 1)[:, 1:], torch.rand(3, 2, 32, 32), scale)
    assert is_non_decreasing(rising, tolerance=0.0)


def test_disc_mask_area():
    disc = disc_mask(64, 64, 0.25)
    assert disc.shape == (1, 1, 64, 64)
    assert abs(float(disc.sum()) - np.pi * 16**2) < 0.05 * np.pi * 16**2
