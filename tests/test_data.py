"""Data layer: demo data, folder layout, JSON datalists, validation split, ensemble and partner datasets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medad_monai.data.datalists import AnomalyDatalist, folder_datalist, input_datalist, load_json_datalist
from medad_monai.data.datasets import EnsembleDataset, PartnerDataset
from medad_monai.data.demo import DEMO_DOMAINS, DemoSpec, generate_domain, resolve_dataset_dir

SMALL = DemoSpec(image_size=32, n_train=6, n_unlabeled=4, unlabeled_anomaly_rate=0.5, n_test_good=2, n_test_bad=3)


def _png(path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_demo_generation_is_deterministic_and_in_layout(tmp_path):
    a = generate_domain("head_ct", tmp_path / "a", SMALL)
    b = generate_domain("head_ct", tmp_path / "b", SMALL)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert len(list((a / "train" / "good").glob("*.png"))) == 6
    assert len(list((a / "test" / "bad").glob("*.png"))) == 3
    manifest = json.loads((a / "dataset.json").read_text())
    assert manifest["n_unlabeled_abnormal"] == 2 and sum(manifest["unlabeled_labels"].values()) == 2
    # every anomalous test image has a non-empty mask of the same size
    for bad in (a / "test" / "bad").glob("*.png"):
        mask = np.array(Image.open(a / "ground_truth" / "bad" / bad.name))
        assert mask.shape == np.array(Image.open(bad)).shape and mask.max() == 255


def test_demo_domains_differ_and_lesions_change_pixels(tmp_path):
    assert len(DEMO_DOMAINS) >= 4  # D²4FAD's leave-one-dataset-out needs several
    means = []
    for d in DEMO_DOMAINS:
        root = generate_domain(d, tmp_path / d, SMALL)
        means.append(np.mean([np.array(Image.open(p)).mean() for p in (root / "train" / "good").glob("*.png")]))
    assert len({round(m) for m in means}) == len(means)


def test_demo_subjects_differ_and_lesions_are_not_just_bright(tmp_path):
    """The demo exercises a method as real data would: normal subjects differ (pose, anatomy, scanner), so another
    subject's same place is not the same image, and no global intensity statistic gives the anomalies away."""
    from medad_monai.metrics.ranking import roc_auc

    spec = DemoSpec(image_size=64, n_train=8, n_unlabeled=0, n_test_good=24, n_test_bad=24, seed=3)
    root = generate_domain("brain_mr", tmp_path / "brain", spec)
    train = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in sorted((root / "train" / "good").glob("*"))])
    # subjects differ: the mean absolute difference between two normals is far above the acquisition noise (~0.02)
    assert np.mean([np.abs(train[i] - train[i + 1]).mean() for i in range(len(train) - 1)]) > 0.04
    images, labels = [], []
    for label, folder in ((0, "good"), (1, "bad")):
        for p in sorted((root / "test" / folder).glob("*")):
            images.append(np.asarray(Image.open(p), np.float32)), labels.append(label)
    x, y = np.stack(images).reshape(len(images), -1), np.asarray(labels)
    for statistic in (x.mean(1), x.max(1), x.std(1)):  # a global statistic separates them no better than a coin
        assert 0.25 < roc_auc(statistic, y) < 0.75
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted((root / "ground_truth" / "bad").glob("*"))]
    assert all(m.any() for m in masks)


def test_folder_datalist_and_masks(tmp_path):
    for i in range(3):
        _png(tmp_path / "train" / "good" / f"n{i}.png")
    _png(tmp_path / "test" / "good" / "g.png")
    _png(tmp_path / "test" / "bad" / "b.png")
    _png(tmp_path / "ground_truth" / "bad" / "b_mask.png")
    assert [it["label"] for it in folder_datalist(tmp_path, "train")] == [0, 0, 0]
    test = folder_datalist(tmp_path, "test")
    assert [it["label"] for it in test] == [0, 1] and test[1]["mask"].endswith("b_mask.png")
    assert folder_datalist(tmp_path, "unlabeled") == []


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/good: folder not found"):
        folder_datalist(tmp_path, "train")
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="train/good: folder is empty"):
        folder_datalist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="nowhere: dataset folder not found"):
        folder_datalist(tmp_path / "nowhere", "train")


def test_json_datalist_resolves_relative_paths(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "list.json").write_text(
        json.dumps({"training": ["imgs/a.png"], "test": [{"image": "imgs/a.png", "label": 1}]})
    )
    items = load_json_datalist(tmp_path / "list.json", "training")
    assert items == [{"image": str(tmp_path / "imgs" / "a.png"), "label": 0}]
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"image": "imgs/missing.png"}]}))
    with pytest.raises(FileNotFoundError, match="missing.png not found"):
        load_json_datalist(tmp_path / "bad.json", "training")


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(20):
        _png(tmp_path / "train" / "good" / f"n{i:02d}.png")
    a, b = AnomalyDatalist(tmp_path, val_fraction=0.2, seed=1), AnomalyDatalist(tmp_path, val_fraction=0.2, seed=1)
    assert a.val == b.val and len(a.val) == 4 and len(a.train) == 16
    assert not {it["image"] for it in a.val} & {it["image"] for it in a.train}


def test_demo_prefix_and_input_datalist(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_MONAI_DATA", str(tmp_path))
    folder = resolve_dataset_dir("demo:fundus/test/bad")
    assert folder.is_dir() and folder.parent.parent.name == "fundus"
    assert len(input_datalist("demo:fundus/test")) == 64
    with pytest.raises(ValueError, match="unknown demo domain"):
        resolve_dataset_dir("demo:nowhere")


def test_ensemble_dataset_gives_each_member_its_own_order():
    base = [{"image": torch.tensor([float(i)])} for i in range(10)]
    ds = EnsembleDataset(base, num_members=3, seed=0)
    stacked = torch.stack([ds[i]["image"][:, 0] for i in range(10)])  # (10, 3)
    for k in range(3):  # every member sees every image once per epoch
        assert sorted(stacked[:, k].tolist()) == [float(i) for i in range(10)]
    assert not torch.equal(stacked[:, 1], stacked[:, 2])


def test_partner_dataset_never_pairs_an_image_with_itself():
    base = [{"image": torch.tensor([float(i)])} for i in range(5)]
    ds = PartnerDataset(base, seed=0)
    for _ in range(20):
        for i in range(5):
            assert ds[i]["source"].item() != i


def test_partner_dataset_draws_from_a_separate_partner_set_even_for_one_image():
    base = [{"image": torch.tensor([-1.0])}]
    partners = [{"image": torch.tensor([float(i)])} for i in range(3)]
    ds = PartnerDataset(base, seed=0, partners=partners)
    drawn = {ds[0]["source"].item() for _ in range(30)}
    assert drawn == {0.0, 1.0, 2.0}  # every partner is a candidate, the item itself is not
    with pytest.raises(ValueError, match="at least 2 images"):
        PartnerDataset(base)
    with pytest.raises(ValueError, match="empty partner"):
        PartnerDataset(base, partners=[])
