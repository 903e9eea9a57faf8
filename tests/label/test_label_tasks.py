"""The MONAI Label pieces without the server: review status from a real ``LocalDatastore``, 2D training items of
2D and 3D studies, the train task's config overrides for every bundle, and bundle discovery errors.

Runs in the ``monailabel`` environment: ``.venv-label/bin/python -m pytest -q tests/label``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="monailabel is not installed: run in the MONAI Label environment (README)")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.interfaces.exception import MONAILabelException  # noqa: E402
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: E402
from PIL import Image  # noqa: E402

from medad_monai.data.demo_volumes import write_demo_subjects  # noqa: E402
from medad_monai.inference import ScoringOptions, load_bundle_model  # noqa: E402
from medad_monai.label.app import find_bundles  # noqa: E402
from medad_monai.label.datastore import ReviewStatus, review_status, studies_by_status, training_items  # noqa: E402
from medad_monai.label.infer import result_extension  # noqa: E402
from medad_monai.label.models import ServedBundles  # noqa: E402
from medad_monai.label.strategy import AnomalyRankingStrategy  # noqa: E402
from medad_monai.label.train import AnomalyTrainTask  # noqa: E402
from medad_monai.networks.ddad import DDAD  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def datastore(tmp_path) -> LocalDatastore:
    """Seven 2D studies and a 3-slice volume: two normals by info, a normal by empty label, an anomalous label, an
    anomalous verdict overriding an empty label, a broken file, and the rest unreviewed."""
    rng = np.random.default_rng(0)
    root = tmp_path / "studies"
    root.mkdir()
    for name in ("a", "b", "c", "d", "e", "f"):
        Image.fromarray(rng.integers(0, 255, (32, 40), dtype=np.uint8)).save(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"not an image")
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(rng.random((24, 20, 3)).astype(np.float32), affine), str(root / "vol.nii.gz"))
    ds = LocalDatastore(str(root), extensions=("*.png", "*.nii.gz"), auto_reload=False)
    empty, lesion = tmp_path / "empty.png", tmp_path / "lesion.png"
    Image.fromarray(np.zeros((32, 40), dtype=np.uint8)).save(empty)
    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[5:9, 5:9] = 1
    Image.fromarray(mask).save(lesion)
    ds.update_image_info("a", {"review": "normal"})
    ds.update_image_info("f", {"review": "normal"})
    ds.save_label("b", str(empty), "final", {})
    ds.save_label("c", str(lesion), "final", {})
    ds.save_label("d", str(empty), "final", {})
    ds.update_image_info("d", {"review": "anomalous"})  # the verdict wins over the (empty) label
    return ds


def test_review_status_from_labels_and_image_info(datastore):
    assert review_status(datastore, "a") == ReviewStatus.NORMAL
    assert review_status(datastore, "b") == ReviewStatus.NORMAL
    assert review_status(datastore, "c") == ReviewStatus.ANOMALOUS
    assert review_status(datastore, "d") == ReviewStatus.ANOMALOUS
    groups = studies_by_status(datastore)
    assert groups[ReviewStatus.UNLABELED] == ["broken", "e", "vol"]


def test_training_items_slice_volumes_and_report_unreadable_studies(datastore, tmp_path):
    paths = [datastore.get_image_uri(i) for i in ("e", "vol", "broken")]
    items, skipped = training_items(paths, -1, axis=2, cache_dir=tmp_path / "slices")
    assert [Path(i["image"]).name for i in items][0] == "e.png"
    slices = [Path(i["image"]) for i in items[1:]]
    assert len(slices) == 3 and all(i["label"] == -1 for i in items)
    vol = nib.load(datastore.get_image_uri("vol"))
    for k, s in enumerate(slices):
        img = nib.load(str(s))
        assert img.shape == (24, 20)
        np.testing.assert_allclose(np.asarray(img.dataobj), np.asarray(vol.dataobj)[:, :, k], rtol=1e-6)
    assert list(skipped) == [datastore.get_image_uri("broken")] and "cannot read image" in skipped[paths[2]]
    # the slices are reused while the study is unchanged
    stamps = [s.stat().st_mtime_ns for s in slices]
    again, _ = training_items(paths[1:2], -1, axis=2, cache_dir=tmp_path / "slices")
    assert [Path(i["image"]) for i in again] == slices and [s.stat().st_mtime_ns for s in slices] == stamps
    along0, _ = training_items(paths[1:2], -1, axis=0, cache_dir=tmp_path / "slices")
    assert len(along0) == 24


def test_training_slices_of_a_volume_are_the_sections_serving_scores(tmp_path):
    # a demo head CT: its end sections shrink; serving scores only slices with >= 0.9 of the largest body, and the
    # model should train and calibrate on those
    (path,) = write_demo_subjects(tmp_path / "studies", "head_ct", [0], size=32, num_slices=16)
    every, _ = training_items([str(path)], 0, axis=2, cache_dir=tmp_path / "all")
    served, _ = training_items([str(path)], 0, axis=2, cache_dir=tmp_path / "body", min_relative_body=0.9)
    assert len(every) == 16 and 1 <= len(served) < 16
    volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    low, high = float(volume.min()), float(volume.max())
    body = [float(((volume[:, :, k] - low) / (high - low) > 0.1).mean()) for k in range(16)]
    kept = sorted(int(Path(i["image"]).name.split("_ax2_")[1][:4]) for i in served)
    assert kept == list(range(kept[0], kept[-1] + 1))  # one run of central sections
    assert 0 not in kept and 15 not in kept  # the end sections are out
    largest = max(body)
    assert all(body[k] >= 0.85 * largest for k in kept)  # (holes filled in the served rule: a little more body)


def _overrides(bundle: str, datastore, tmp_path, max_epochs: int = 3) -> dict:
    """What the train task would pass to ``monai.bundle.run`` for ``bundle`` (the run itself is stubbed out)."""
    task = AnomalyTrainTask(REPO / "bundles" / bundle, {}, slice_cache=tmp_path / "slices")
    captured = {}
    task.run_single_gpu = lambda request, overrides: captured.update(overrides)
    task({"max_epochs": max_epochs, "val_split": 0.5, "device": "cpu", "pretrained": False}, datastore)
    return captured


def test_train_overrides_ddad_normals_validation_and_unlabeled_pool(datastore, tmp_path):
    o = _overrides("ddad", datastore, tmp_path)
    normals = [datastore.get_image_uri(i) for i in ("a", "b", "f")]
    train, val = o["train#dataset#data"], o["validate#dataset#data"]
    # val_split 0.5 of 3 normals: one for the threshold, two to train on (the smallest batch BatchNorm trains on)
    assert len(train) == 2 and len(val) == 1 and sorted(d["image"] for d in train + val) == normals
    assert o["batch_size"] == 2 and o["asr_batch_size"] == 2  # a drop_last loader over 2 images still yields a batch
    # the unreviewed 2D images (e + 3 slices of vol) split into the UDM pool and the bundle's held-out fraction
    pool = [d["image"] for d in o["train#udm_dataset#data"]]
    holdout = [d["image"] for d in o["train#pool_holdout_dataset#data"]]
    ddad = json.loads((REPO / "bundles" / "ddad" / "configs" / "train.json").read_text())
    n_out = round(4 * ddad["pool_holdout"])
    assert n_out >= 1 and len(holdout) == n_out and not set(holdout) & set(pool)
    assert pool[:2] == [d["image"] for d in train] and len(pool) == 2 + 4 - n_out  # training normals + the pool
    assert o["train#pipeline#num_unlabeled"] == 4 - n_out
    assert o["train#trainer#max_epochs"] == 3
    assert o["asr_epochs"] == max(1, round(ddad["asr_epochs"] * 3 / ddad["epochs"]))
    assert o["bundle_root"] == str(REPO / "bundles" / "ddad")


def test_train_overrides_d24fad_use_the_normals_as_the_support_set(datastore, tmp_path):
    o = _overrides("d24fad", datastore, tmp_path)
    assert "train#dataset#data" not in o  # it trains on its source datasets
    assert sorted(d["image"] for d in o["support_dir"]) == [datastore.get_image_uri(i) for i in ("a", "b", "f")]
    assert "batch_size" not in o  # it trains on its source datasets, at its own batch size


def test_train_overrides_pdd(datastore, tmp_path):
    o = _overrides("pdd", datastore, tmp_path)
    assert len(o["train#dataset#data"]) == 2 and len(o["validate#dataset#data"]) == 1 and o["batch_size"] == 2
    assert "train#udm_dataset#data" not in o and "support_dir" not in o


def test_training_states_the_real_minimum_of_normals(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    for name in ("x", "y"):
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / f"{name}.png")
    ds = LocalDatastore(str(root), extensions=("*.png",), auto_reload=False)
    for name in ("x", "y"):
        ds.update_image_info(name, {"review": "normal"})
    # two to train on and one to calibrate the threshold on; D24FAD needs its K supports (2 by default)
    with pytest.raises(MONAILabelException, match="at least 3 readable 2D images reviewed normal.*has 2"):
        _overrides("ddad", ds, tmp_path)
    assert len(_overrides("d24fad", ds, tmp_path)["support_dir"]) == 2


def test_find_bundles(tmp_path):
    assert set(find_bundles(REPO / "bundles")) >= {"ddad", "d24fad", "pdd"}
    assert list(find_bundles(REPO / "bundles", "pdd,ddad")) == ["pdd", "ddad"]
    with pytest.raises(ValueError, match=r"\['nope'\] not found"):
        find_bundles(REPO / "bundles", "ddad,nope")
    with pytest.raises(ValueError, match="no MONAI bundle"):
        find_bundles(tmp_path)
    shutil.copytree(REPO / "bundles" / "pdd" / "configs", tmp_path / "mine" / "configs")
    assert list(find_bundles(tmp_path)) == ["mine"]


def test_result_container_follows_the_client_when_lossless():
    assert result_extension(None, "mask", is_picture=True) == ".png"
    assert result_extension(None, "mask", is_picture=False) == ".nii.gz"
    assert result_extension(".nrrd", "mask", is_picture=False) == ".nrrd"  # e.g. Slicer asking for NRRD
    assert result_extension("seg.nrrd", "mask", is_picture=False) == ".seg.nrrd"
    assert result_extension(".jpg", "mask", is_picture=True) == ".png"  # never lossy for a label
    assert result_extension(".png", "heatmap", is_picture=True) == ".nii.gz"  # PNG cannot hold float32
    assert result_extension(".png", "mask", is_picture=False) == ".nii.gz"  # a volume's label is not a picture


def test_strategy_ranks_with_the_requested_the_configured_or_the_first_trained_bundle(tmp_path):
    bundles = {}
    for name in ("a_untrained", "b_trained", "c_trained"):
        shutil.copytree(REPO / "bundles" / "pdd" / "configs", tmp_path / name / "configs")
        bundles[name] = tmp_path / name
    for name in ("b_trained", "c_trained"):
        (tmp_path / name / "models").mkdir()
        (tmp_path / name / "models" / "model.pt").write_bytes(b"")
    strategy = AnomalyRankingStrategy("most_anomalous", bundles, ServedBundles(), tmp_path / "cache")
    assert strategy.model_name({}) == "b_trained"
    assert strategy.model_name({"model": "c_trained"}) == "c_trained"
    pinned = AnomalyRankingStrategy("most_anomalous", bundles, ServedBundles(), tmp_path / "cache", "c_trained")
    assert pinned.model_name({}) == "c_trained"
    none = AnomalyRankingStrategy("nearest_threshold", {"a": bundles["a_untrained"]}, ServedBundles(), tmp_path)
    with pytest.raises(MONAILabelException) as e:
        none.model_name({})
    assert "no served bundle has a trained model" in e.value.msg


@pytest.mark.parametrize("bundle", ["ddad", "pdd"])
def test_reviewed_normals_of_mixed_formats_collate_in_the_training_pipeline(bundle, tmp_path):
    # a datastore of PNG studies with one 2D DICOM (the documented *.dcm option): under pydicom 2.4, which this
    # environment pins, their readers' metadata differed in shape and the first training batch failed to collate
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset
    from pydicom.data import get_testdata_file

    for i in range(3):
        Image.fromarray(np.full((40, 50), 20 * i, np.uint8)).save(tmp_path / f"n{i}.png")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "n3.dcm")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    data = [{"image": str(p)} for p in sorted(tmp_path.glob("n*"))]
    loader = DataLoader(Dataset(data, parser.get_parsed_content("preprocessing")), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape[0] == 4 and batch["image"].shape[-1] == parser["image_size"]


def test_a_failed_training_ends_with_its_actual_cause(datastore, tmp_path, monkeypatch):
    # the client polling GET /train/ sees the last lines of the training's output: they must name the cause, not
    # MONAI's "Failed to evaluate ConfigExpression" wrapper
    from monailabel.tasks.train.bundle import BundleTrainTask

    def fail(self, request, overrides):
        try:
            raise ValueError("the training loader yields no batch (5 images, batch size 16)")
        except ValueError as e:
            raise RuntimeError('Failed to evaluate ConfigExpression: "$@train#trainer.run()"') from e

    monkeypatch.setattr(BundleTrainTask, "run_single_gpu", fail)
    task = AnomalyTrainTask(REPO / "bundles" / "ddad", {}, slice_cache=tmp_path / "slices")
    with pytest.raises(RuntimeError) as info:
        task.run_single_gpu({}, {})
    assert str(info.value) == "training 'ddad' failed: ValueError: the training loader yields no batch (5 images, " \
        "batch size 16)"  # fmt: skip
    assert info.value.__cause__ is None  # so the traceback ends with it


def _tiny_ddad_bundle(root: Path) -> Path:
    """The repository's DDAD configs with a slim 2-member network, and an untrained model of it (as if trained)."""
    shutil.copytree(REPO / "bundles" / "ddad" / "configs", root / "configs")
    inference = json.loads((root / "configs" / "inference.json").read_text())
    inference["num_members"] = 2
    inference["network_def"]["multiplier"] = 0.25
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "models").mkdir()
    net = DDAD(num_members=2, multiplier=0.25)
    net.has_udm.fill_(True)
    net.threshold.fill_(0.5)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.mark.parametrize("val_split,held_out", [(0.6, 3), (0.2, 1)])
def test_normal_volumes_split_by_study_and_the_held_out_ones_calibrate_a_volume_threshold(
    tmp_path, monkeypatch, caplog, val_split, held_out
):
    bundle = _tiny_ddad_bundle(tmp_path / "ddad")
    studies = write_demo_subjects(tmp_path / "studies", "head_ct", range(5), size=32, num_slices=8)
    ds = LocalDatastore(str(tmp_path / "studies"), extensions=("*.nii.gz",), auto_reload=False)
    for image_id in ds.get_unlabeled_images():
        ds.update_image_info(image_id, {"review": "normal"})
    captured: dict = {}
    # the bundle's training itself is not run: the model above stands for what it writes
    monkeypatch.setattr(BundleTrainTask, "run_single_gpu", lambda self, request, overrides: captured.update(overrides))
    task = AnomalyTrainTask(bundle, {}, slice_cache=tmp_path / "slices", scoring=ScoringOptions(axis=2))
    with caplog.at_level("INFO", logger="medad_monai"):
        task({"max_epochs": 1, "val_split": val_split, "device": "cpu", "pretrained": False}, ds)

    def subjects(items: list[dict]) -> set[str]:
        return {Path(i["image"]).name.split("_normal")[0] for i in items}

    train, val = subjects(captured["train#dataset#data"]), subjects(captured["validate#dataset#data"])
    # whole studies on each side: the threshold is calibrated on volumes the model did not train on
    assert not train & val and len(val) == held_out and len(train) == 5 - held_out
    # of each volume the sections serving scores (at least 0.9 of its largest body, the app's default)
    assert 1 <= len(captured["validate#dataset#data"]) < 8 * held_out
    calibration = load_bundle_model(bundle, device="cpu").volume_calibration
    if held_out >= 3:
        assert val == {Path(p).name.split("_normal")[0] for p in studies[-held_out:]}
        assert calibration is not None and calibration.num_volumes == held_out and calibration.axis == 2
        assert calibration.threshold > 0 and "volume threshold" in caplog.text
    else:  # too few held-out volumes: none stored, and the log says why
        assert calibration is None and "a volume threshold needs 3" in caplog.text
