"""Loss functions against hand-computed references."""

import math

import pytest
import torch

from medad_monai.losses.focal import FocalLoss, focal_loss
from medad_monai.losses.memory import addressing_entropy
from medad_monai.losses.reconstruction import HeteroscedasticLoss, heteroscedastic_loss


def test_heteroscedastic_loss_hand_computed():
    # two pixels: (mean, logvar, x) = (0, 0, 1) and (1, log 4, -1)
    mean = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    logvar = torch.tensor([0.0, math.log(4.0)]).view(1, 1, 1, 2)
    x = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2)
    # exp(-0)*1 = 1 ; exp(-log4)*4 = 1 -> mean 1 ; mean(logvar) = log(4)/2
    expected = 1.0 + math.log(4.0) / 2
    assert heteroscedastic_loss(mean, logvar, x).item() == pytest.approx(expected, rel=1e-6)
    out = torch.cat([mean, logvar], dim=1)
    assert HeteroscedasticLoss()(out, x).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_hand_computed():
    # one pixel of class 1 with p1 = 0.8, one of class 0 with p0 = 0.6 (two-class softmax logits)
    logits = torch.tensor([[0.0, math.log(4.0)], [math.log(1.5), 0.0]]).t().reshape(1, 2, 1, 2)
    target = torch.tensor([1, 0]).view(1, 1, 1, 2)
    smooth = 1e-5
    terms = []
    for p in (0.8, 0.6):
        # one-hot clamped to [smooth, 1 - smooth]: p_t = (1 - s) p + s (1 - p) + s
        pt = (1 - smooth) * p + smooth * (1 - p) + smooth
        terms.append(-((1 - pt) ** 2) * math.log(pt))
    expected = sum(terms) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-5)
    assert FocalLoss(gamma=2.0)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_gamma_zero_is_cross_entropy():
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 1, 4, 4))
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0])
    assert focal_loss(logits, target, gamma=0.0, smooth=0.0).item() == pytest.approx(ce.item(), rel=1e-5)


def test_addressing_entropy():
    uniform = torch.full((3, 4), 0.25)
    onehot = torch.eye(4)[:3]
    assert addressing_entropy(uniform).item() == pytest.approx(math.log(4), rel=1e-5)
    assert addressing_entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)
