"""Episodic data of D²4FAD (Dong et al., ICLR 2026; official ``main.py::train``): supports come from the query's
dataset and never include the query; fixed (official) vs per-epoch resampled supports; collation for
``D24FAD.episode_outputs``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Resized, ScaleIntensityd
from PIL import Image
from torch.utils.data import DataLoader

from medad_monai.data.episodes import EpisodeDataset, dataset_name
from medad_monai.engines.steps import PrepareBatchKeys
from medad_monai.transforms import ChannelPolicyd, LoadAnomalyImaged

SIZE = 32


def _transform() -> Compose:
    return Compose(
        [
            LoadAnomalyImaged(keys="image"),
            ChannelPolicyd(keys="image", channels=3),
            Resized(keys="image", spatial_size=(SIZE, SIZE)),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        ]
    )


def _dataset(root: Path, name: str, n: int, value: int) -> Path:
    """``n`` normals whose pixel (0, 0) encodes (dataset, index), so a tensor tells where it came from."""
    good = root / name / "train" / "good"
    good.mkdir(parents=True)
    for i in range(n):
        arr = np.full((40, 40), value, np.uint8)
        arr[0, 0] = 0
        arr[-1, -1] = 255
        Image.fromarray(arr).save(good / f"{name}_{i:02d}.png")
    return root / name


@pytest.fixture()
def sources(tmp_path) -> list[str]:
    return [str(_dataset(tmp_path, "a", 5, 60)), str(_dataset(tmp_path, "b", 7, 180))]


def test_supports_come_from_the_query_dataset_and_exclude_the_query(sources):
    ds = EpisodeDataset(sources, _transform(), num_support=3, seed=0)
    assert len(ds) == 12 and ds.names == ["a", "b"]
    for q in range(len(ds)):
        item = ds[q]
        sup = ds.support_indices(q)
        assert q not in sup and len(set(sup)) == 3
        assert all(ds.group_of[i] == ds.group_of[q] for i in sup)
        assert item["source"] == ds.names[ds.group_of[q]]
        assert item["query"].shape == (3, SIZE, SIZE) and item["support"].shape == (3, 3, SIZE, SIZE)
        # the mid-grey level identifies the dataset: supports look like their query's dataset
        level = item["query"][0, SIZE // 2, SIZE // 2]
        assert torch.allclose(item["support"][:, 0, SIZE // 2, SIZE // 2], level.expand(3))
        assert float(item["support"].min()) >= 0.0 and float(item["support"].max()) <= 1.0


def test_fixed_supports_stay_and_resampled_supports_change_per_epoch(sources):
    fixed = EpisodeDataset(sources, _transform(), num_support=2, resample=False, seed=1)
    before = [fixed.support_indices(i) for i in range(len(fixed))]
    fixed.set_epoch(3)
    assert [fixed.support_indices(i) for i in range(len(fixed))] == before

    moving = EpisodeDataset(sources, _transform(), num_support=2, resample=True, seed=1)
    assert [moving.support_indices(i) for i in range(len(moving))] == before  # same seed, same first draw
    moving.set_epoch(1)
    epoch1 = [moving.support_indices(i) for i in range(len(moving))]
    assert epoch1 != before
    moving.set_epoch(1)
    assert [moving.support_indices(i) for i in range(len(moving))] == epoch1  # deterministic
    for q, sup in enumerate(epoch1):
        assert q not in sup and all(moving.group_of[i] == moving.group_of[q] for i in sup)


def test_collates_to_query_and_support_keyword_arguments(sources):
    ds = EpisodeDataset(sources, _transform(), num_support=2)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    inputs, _ = PrepareBatchKeys(["query", "support"])(batch, torch.device("cpu"))
    assert inputs["query"].shape == (4, 3, SIZE, SIZE)
    assert inputs["support"].shape == (4, 2, 3, SIZE, SIZE)
    assert type(inputs["query"]) is torch.Tensor


def test_too_small_source_is_named(tmp_path):
    small = _dataset(tmp_path, "tiny", 2, 100)
    with pytest.raises(ValueError, match="tiny.*at least 3"):
        EpisodeDataset([str(small)], _transform(), num_support=2)


def test_dataset_names():
    assert dataset_name("demo:head_ct") == "head_ct"
    assert dataset_name("/data/RSNA/") == "RSNA"
