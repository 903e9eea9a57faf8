"""Tests for medad_monai.networks.teachers (frozen WideResNet50-2 teacher and its weight loading)."""

import logging
import os
import urllib.error

import pytest
import torch
from torchvision.models import wide_resnet50_2

from medad_monai.networks import weights as weights_module
from medad_monai.networks.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WRN50_2_IMAGENET_FILENAME,
    WideResNetTeacher,
    imagenet_weights_cache_path,
)


@pytest.fixture(scope="module")
def random_teacher():
    torch.manual_seed(0)
    return WideResNetTeacher(weights="random")


@pytest.fixture(scope="module")
def torchvision_state_dict_file(tmp_path_factory):
    """A torchvision-format (classifier included) state dict of a randomly initialised WRN50-2."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "wrn50_2_random.pth"
    torch.save(wide_resnet50_2(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("size", [64, 128])
def test_feature_shapes(random_teacher, size):
    with torch.no_grad():
        feats = random_teacher(torch.rand(2, 3, size, size))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, size // s, size // s) for c, s in zip(WideResNetTeacher.out_channels, WideResNetTeacher.strides)
    ]


def test_frozen_and_always_eval(random_teacher):
    parent = torch.nn.ModuleDict({"teacher": random_teacher, "head": torch.nn.Conv2d(1, 1, 1)})
    parent.train()
    assert parent["head"].training
    assert not random_teacher.training
    assert not any(m.training for m in random_teacher.modules())
    assert not any(p.requires_grad for p in random_teacher.parameters())
    before = random_teacher.bn1.running_mean.clone()
    out = random_teacher(torch.rand(2, 3, 64, 64))
    assert not out[3].requires_grad
    torch.testing.assert_close(random_teacher.bn1.running_mean, before)  # no BN statistics update


def test_normalize_flag(random_teacher):
    normalized = WideResNetTeacher(weights="random", normalize=True)
    normalized.load_state_dict(random_teacher.state_dict())
    x = torch.rand(1, 3, 64, 64)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x)[2], random_teacher((x - mean) / std)[2])
    # mean/std are not checkpoint state
    assert "mean" not in random_teacher.state_dict()


def test_local_file_loads_and_equals(torchvision_state_dict_file, caplog):
    reference = torch.load(torchvision_state_dict_file, weights_only=True)
    with caplog.at_level(logging.INFO, logger="medad_monai"):
        teacher = WideResNetTeacher(weights=str(torchvision_state_dict_file))
    assert str(torchvision_state_dict_file) in caplog.text
    state = teacher.state_dict()
    assert set(state) == {k for k in reference if not k.startswith("fc.")}
    for k, v in state.items():
        assert torch.equal(v, reference[k]), k


def test_cached_imagenet_file_is_used_without_download(torchvision_state_dict_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = imagenet_weights_cache_path()
    assert cache == os.path.join(str(tmp_path), "hub", "checkpoints", WRN50_2_IMAGENET_FILENAME)
    os.makedirs(os.path.dirname(cache))
    os.symlink(torchvision_state_dict_file, cache)

    def no_download(file, dest):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(weights_module, "_download", no_download)
    teacher = WideResNetTeacher(weights="imagenet")
    assert teacher.weights_description.startswith("WideResNet50-2 (torchvision IMAGENET1K_V1)")
    reference = torch.load(torchvision_state_dict_file, weights_only=True)
    assert torch.equal(teacher.conv1.weight, reference["conv1.weight"])


def test_offline_imagenet_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(file, dest):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_module, "_download", offline)
    with pytest.raises(RuntimeError) as info:
        WideResNetTeacher(weights="imagenet")
    msg = str(info.value)
    expected_path = os.path.join(str(tmp_path), "hub", "checkpoints", WRN50_2_IMAGENET_FILENAME)
    assert "could not be downloaded" in msg.lower()
    assert expected_path in msg
    assert WRN50_2_IMAGENET_FILENAME in msg
    assert "'random'" in msg and "MEDAD_WRN50_2_WEIGHTS" in msg and "teacher_weights" in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_missing_local_file_names_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        WideResNetTeacher(weights=str(missing))


def test_wrong_state_dict_is_rejected(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises((ValueError, RuntimeError)):
        WideResNetTeacher(weights=str(path))
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="state dict"):
        WideResNetTeacher(weights=str(path))


def test_scriptable(random_teacher):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(random_teacher)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)[3], random_teacher(x)[3])


def test_num_layers_stops_the_forward_early():
    torch.manual_seed(0)
    full = WideResNetTeacher("random")
    three = WideResNetTeacher("random", num_layers=3)
    three.load_state_dict(full.state_dict())  # one state-dict layout whatever is computed
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = full(x), three(x)
    assert len(a) == 4 and len(b) == 3
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="num_layers"):
        WideResNetTeacher("random", num_layers=5)
