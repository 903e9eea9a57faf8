"""The one image score and the one decision (medad_monai.scores), and every route that uses them."""

from __future__ import annotations

import math

import pytest
import torch

from medad_monai.networks.d24fad import D24FAD
from medad_monai.networks.ddad import DDAD
from medad_monai.scores import decision, image_score, score_reduction
from medad_monai.transforms import AnomalyScored, ThresholdDecisiond


def test_image_score_hand_computed():
    m = torch.zeros(2, 1, 4, 4)
    m[0, 0, 1, 1] = 3.0
    m[1] += 1.0
    torch.testing.assert_close(image_score(m), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(image_score(m, "mean"), torch.tensor([3.0 / 16, 1.0]))
    with pytest.raises(ValueError, match="reduction"):
        image_score(m, "median")


def test_decision_and_the_undecided_model():
    assert decision(0.6, 0.5) == 1 and decision(0.5, 0.5) == 0 and decision(0.1, 0.5) == 0
    assert decision(0.6, math.nan) == -1


def test_each_network_states_its_reduction_and_the_transforms_follow_it():
    ddad, d24fad = DDAD(num_members=2, multiplier=0.25), D24FAD(image_size=64, num_support=2)
    assert score_reduction(ddad) == "mean" and score_reduction(d24fad) == "max"  # MedIA 2023 §3.4; official test.py
    d = {"pred": torch.tensor([[[0.1, 0.5], [0.2, 0.4]]])}
    assert AnomalyScored(network=d24fad)(d)["score"].item() == pytest.approx(0.5)
    assert AnomalyScored(network=ddad)(d)["score"].item() == pytest.approx(0.3)
    ddad.threshold.fill_(0.25)
    out = ThresholdDecisiond(network=ddad)(AnomalyScored(network=ddad)(d))
    assert out["decision"] == 1 and out["threshold"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="states no image-score reduction"):
        score_reduction(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs the network"):
        AnomalyScored()
