"""One rule for every teacher's pretrained weights (medad_monai.networks.weights): random, a path, pretrained, auto;
the environment variable, the torch hub cache and the download, in that order; the fallback is said loudly."""

from __future__ import annotations

import os

import pytest
import torch

from medad_monai.networks import weights as weights_module
from medad_monai.networks.weights import (
    VANILLA_VMAMBA_TINY,
    WRN50_2_IMAGENET,
    WeightsUnavailableError,
    cache_path,
    resolve_weights,
)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache, no environment variables, and a download that records its calls."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for file in (WRN50_2_IMAGENET, VANILLA_VMAMBA_TINY):
        monkeypatch.delenv(file.env, raising=False)
    calls: list[tuple[str, str]] = []

    def download(file, dest):
        calls.append((file.url, dest))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(b"weights")

    monkeypatch.setattr(weights_module, "_download", download)
    return calls


@pytest.mark.parametrize("file", [WRN50_2_IMAGENET, VANILLA_VMAMBA_TINY], ids=["wrn50_2", "vmamba_tiny"])
def test_the_same_search_order_for_every_teacher(hub, file, tmp_path, monkeypatch):
    assert resolve_weights("random", file) == (None, "random initialisation")
    assert resolve_weights(None, file) == (None, "random initialisation")
    # nothing local: pretrained and auto download the official file into the torch hub cache, once
    path, description = resolve_weights("pretrained", file)
    assert path == cache_path(file) == str(tmp_path / "hub" / "checkpoints" / file.filename)
    assert hub == [(file.url, path)] and "downloaded" in description
    assert resolve_weights("auto", file)[0] == path and len(hub) == 1  # now cached: no second download
    assert resolve_weights("imagenet", file)[0] == path
    # the environment variable names a local copy and comes first
    local = tmp_path / "local.pth"
    local.write_bytes(b"x")
    monkeypatch.setenv(file.env, str(local))
    assert resolve_weights("auto", file)[0] == str(local)
    monkeypatch.setenv(file.env, str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=file.env):
        resolve_weights("pretrained", file)
    # a path is that file
    assert resolve_weights(str(local), file)[0] == str(local)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resolve_weights(str(tmp_path / "nope.pth"), file)


def test_offline_pretrained_fails_and_auto_falls_back_loudly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(WRN50_2_IMAGENET.env, raising=False)

    def offline(file, dest):
        raise OSError("no network")

    monkeypatch.setattr(weights_module, "_download", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("pretrained", WRN50_2_IMAGENET)
    assert cache_path(WRN50_2_IMAGENET) in str(info.value) and "'random'" in str(info.value)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        path, description = resolve_weights("auto", WRN50_2_IMAGENET)
    assert path is None and "random" in description
