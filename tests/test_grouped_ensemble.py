"""DDAD's ensembles as one grouped computation: the same outputs, gradients and BatchNorm running statistics as the
member loop (within 1e-6), for every backbone, in training and evaluation mode, and through the DDAD bundle option."""

from __future__ import annotations

import copy

import pytest
import torch

from medad_monai.losses.autoencoder import EnsembleReconstructionLoss
from medad_monai.networks.autoencoders import AEEnsemble
from medad_monai.networks.ddad import DDAD
from medad_monai.networks.grouped_ensemble import grouped_outputs


def _pair(backbone: str, **kwargs) -> tuple[AEEnsemble, AEEnsemble]:
    torch.manual_seed(0)
    loop = AEEnsemble(3, backbone, multiplier=0.5, image_size=32, **kwargs)
    grouped = copy.deepcopy(loop)
    grouped.vectorised = True
    return loop, grouped


@pytest.mark.parametrize(("backbone", "kwargs"), [("ae", {}), ("ae-u", {}), ("memae", {"shrink_thres": 0.02})])
def test_grouped_training_step_equals_the_member_loop(backbone, kwargs):
    loop, grouped = _pair(backbone, **kwargs)
    x = torch.rand(4, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    criterion = EnsembleReconstructionLoss(backbone)
    losses = []
    for net in (loop, grouped):
        net.train()
        out = net.training_outputs(x)
        assert len(out["outputs"]) == 3 and out["outputs"][0].shape == (4, 2 if backbone == "ae-u" else 1, 32, 32)
        assert ("attention" in out) == (backbone == "memae")
        loss = criterion(out)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-6)
    for (name, a), (_, b) in zip(loop.named_parameters(), grouped.named_parameters()):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), (_, b) in zip(loop.named_buffers(), grouped.named_buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)  # running statistics, batches tracked


def test_grouped_outputs_in_eval_mode_use_the_running_statistics():
    loop, grouped = _pair("ae-u")
    x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    for net in (loop, grouped):  # a step in training mode moves the running statistics off their initial values
        net.train()
        net.training_outputs(x)
        net.eval()
    expected = torch.stack([m(x[:, k]) for k, m in enumerate(loop.members)], dim=1)
    with torch.no_grad():
        got, attention = grouped_outputs(list(grouped.members), x)
    assert attention is None
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert all(not m.training for m in grouped.modules())


def test_the_ddad_option_makes_both_ensembles_grouped_and_keeps_the_checkpoint_layout():
    torch.manual_seed(0)
    plain = DDAD(num_members=2, vectorised_members=False)  # the paper's backbone width, 64 px
    grouped = DDAD(num_members=2, vectorised_members=True)
    assert (plain.ndm.vectorised, grouped.ndm.vectorised, grouped.udm.vectorised) == (False, True, True)
    grouped.load_state_dict(plain.state_dict())  # the same keys: a checkpoint serves either way
    x = torch.rand(8, 2, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a, b = plain.ndm.training_outputs(x)["outputs"], grouped.ndm.training_outputs(x)["outputs"]
    for u, v in zip(a, b):
        torch.testing.assert_close(v, u, rtol=0, atol=1e-6)
