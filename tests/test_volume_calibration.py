"""A threshold for 3D volumes calibrated on normal volumes: the quantile of their served scores, stored with its
scoring options in the weights (checkpoint and TorchScript), served for volumes scored with those options and the
image threshold otherwise; the command line and bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_testing import export_torchscript
from PIL import Image
from test_volume_inference import DDAD_CONFIGS, TINY, make_ddad_bundle

from medad_monai.cli import Commands
from medad_monai.data.demo_volumes import demo_volume, write_demo_subjects
from medad_monai.handlers.threshold import calibrate_threshold
from medad_monai.inference import ScoringOptions, load_bundle_model, score_volume
from medad_monai.inference.volume_calibration import (
    calibrate_volume_threshold,
    find_volumes,
    store_volume_calibration,
)
from medad_monai.networks.d24fad import D24FAD
from medad_monai.networks.ddad import DDAD
from medad_monai.networks.volume_threshold import (
    VOLUME_KEY,
    VolumeCalibration,
    set_volume_calibration,
    volume_calibration,
)

DOMAIN = "head_ct"


@pytest.fixture(scope="module")
def normals(tmp_path_factory) -> Path:
    """Three normal demo head CT subjects, not the subject the tests then serve."""
    folder = tmp_path_factory.mktemp("normals")
    write_demo_subjects(folder, DOMAIN, [100, 101, 102], size=64, num_slices=16)
    return folder


def _bundle(root: Path) -> Path:
    make_ddad_bundle(root)
    return root


def _model(root: Path, prefer: str = "pt"):
    return load_bundle_model(root, device="cpu", overrides=TINY, prefer=prefer)


def test_the_volume_threshold_is_the_quantile_of_the_served_scores_of_normal_volumes(normals, tmp_path):
    root = _bundle(tmp_path / "bundle")
    model = _model(root)
    volumes = find_volumes([normals])
    assert [p.name for p in volumes] == [f"{DOMAIN}_subject{s}_normal.nii.gz" for s in (100, 101, 102)]
    calibration, scores = calibrate_volume_threshold(model, volumes, quantile=0.9)
    served = [score_volume(model, v, threshold=float("nan")).score for v in volumes]  # as serving scores them
    assert [s for _, s in scores] == pytest.approx(served, rel=1e-6)
    a, b, c = sorted(served)
    assert calibration.threshold == pytest.approx(b + 0.8 * (c - b), rel=1e-6)  # numpy's linear 0.9 quantile of 3
    assert (calibration.quantile, calibration.num_volumes, calibration.axis) == (0.9, 3, 2)
    assert (calibration.volume_reduction, calibration.min_relative_body) == ("max", 0.9)
    assert model.volume_calibration == calibration  # set on the served network too


def test_a_stored_volume_threshold_decides_volumes_scored_with_its_options(normals, tmp_path, caplog):
    root = _bundle(tmp_path / "bundle")
    calibration, _ = calibrate_volume_threshold(_model(root), find_volumes([normals]), quantile=0.95)
    assert store_volume_calibration(root, calibration) == [root / "models" / "model.pt"]
    model = _model(root)  # a fresh load reads it from model.pt
    stored = model.volume_calibration
    assert stored is not None and stored.threshold == pytest.approx(calibration.threshold, rel=1e-6)
    assert model.threshold == pytest.approx(0.5)  # the image threshold is kept
    assert model.describe()["volume_calibration"]["num_volumes"] == 3
    subject = demo_volume(DOMAIN, True, 0, size=64, num_slices=16)
    r = score_volume(model, subject.image, affine=subject.affine)
    assert (r.threshold_source, r.threshold) == ("volume", pytest.approx(stored.threshold))
    assert r.decision == int(r.score > stored.threshold) and r.summary()["threshold_source"] == "volume"
    labelled = np.flatnonzero(r.mask.reshape(-1, r.mask.shape[2]).any(0))  # slices with a label
    assert all(r.slice_scores[z] > stored.threshold for z in labelled)  # the label follows the served threshold
    # other options: the image threshold, and a warning that says why
    with caplog.at_level(logging.WARNING, logger="medad_monai"):
        other = score_volume(model, subject.image, affine=subject.affine, volume_reduction="mean")
    assert (other.threshold_source, other.threshold) == ("image", pytest.approx(0.5))
    assert "volume threshold was calibrated with axis 2, max" in caplog.text
    # a 2D image keeps the image threshold; an explicit threshold wins over both
    two_d = score_volume(model, subject.image[:, :, 8])
    assert (two_d.threshold_source, two_d.threshold) == ("image", pytest.approx(0.5))
    forced = score_volume(model, subject.image, affine=subject.affine, threshold=0.25)
    assert (forced.threshold_source, forced.threshold) == ("override", 0.25)


def test_the_calibration_holds_only_for_its_scoring_options():
    c = VolumeCalibration(1.0, 0.95, 8, 2, "topk", 3, 0.9)

    def holds(**options) -> bool:
        o = ScoringOptions(**options)
        return c.holds_for(o.axis, o.volume_reduction, o.top_k, o.min_relative_body)

    assert holds(axis=-1, volume_reduction="topk", top_k=3, min_relative_body=0.9)
    assert not holds(volume_reduction="topk", top_k=4)
    assert not holds(axis=0, volume_reduction="topk", top_k=3)
    assert not holds(volume_reduction="max")
    assert not holds(volume_reduction="topk", top_k=3, min_relative_body=0.0)
    # top_k does not matter for max
    assert VolumeCalibration(1.0, 0.95, 8, 2, "max", 5, 0.9).holds_for(2, "max", 1, 0.9)
    net = DDAD(num_members=2, multiplier=0.25)
    assert volume_calibration(net) is None  # NaN until calibrated
    getattr(net, VOLUME_KEY).copy_(c.to_tensor())
    assert volume_calibration(net) == c


def test_recalibrating_the_image_threshold_clears_the_volume_threshold(caplog):
    # a run continued from a calibrated checkpoint (MONAI Label's retraining) ends with a new image threshold: the
    # volume threshold measured on the old weights must not be served with the new ones
    net = DDAD(num_members=2, multiplier=0.25)
    set_volume_calibration(net, VolumeCalibration(1.4, 0.95, 8, 2, "max", 1, 0.9))
    with caplog.at_level(logging.WARNING, logger="medad_monai"):
        assert calibrate_threshold(net, np.array([0.1, 0.2, 0.3, 0.4]), 0.5) == pytest.approx(0.25)
    assert volume_calibration(net) is None and "volume threshold" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medad_monai"):
        calibrate_threshold(net, np.array([0.1, 0.2]), 0.5)  # nothing to clear: no warning
    assert volume_calibration(net) is None and "volume threshold" not in caplog.text


def test_checkpoints_from_before_the_volume_threshold_load_without_one():
    for net, kwargs in (
        (DDAD(num_members=2, multiplier=0.25), {"num_members": 2, "multiplier": 0.25}),
        (D24FAD(teacher_weights="random", num_support=2), {"teacher_weights": "random", "num_support": 2}),
    ):
        state = {k: v for k, v in net.state_dict().items() if k != VOLUME_KEY}
        fresh = type(net)(**kwargs)
        getattr(fresh, VOLUME_KEY).fill_(1.0)
        fresh.load_state_dict(state)  # strict: the missing buffer is filled, as NaN
        assert volume_calibration(fresh) is None


def test_a_torchscript_bundle_is_updated_with_its_embedded_files_kept(normals, tmp_path):
    root = _bundle(tmp_path / "bundle")
    ts = root / "models" / "model.ts"
    export_torchscript(
        root, str(root / "configs" / "metadata.json"), str(root / "configs" / "inference.json"), ts,
        num_members=2, **{"network_def#multiplier": 0.25},
    )  # fmt: skip
    calibration, _ = calibrate_volume_threshold(_model(root), find_volumes([normals]))
    assert store_volume_calibration(root, calibration) == [root / "models" / "model.pt", ts]
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)
    assert (
        json.loads(extra["metadata.json"])["name"] == json.loads((DDAD_CONFIGS / "metadata.json").read_text())["name"]
    )
    assert json.loads(extra["inference.json"])  # the embedded config is kept
    served = _model(root, prefer="ts")
    assert served.model_file == ts
    assert served.volume_calibration.threshold == pytest.approx(calibration.threshold, rel=1e-6)


def test_bad_input_is_named(normals, tmp_path):
    root = _bundle(tmp_path / "bundle")
    model = _model(root)
    volumes = find_volumes([normals])
    with pytest.raises(ValueError, match="at least 3 normal volumes, got 2"):
        calibrate_volume_threshold(model, volumes[:2])
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\]"):
        calibrate_volume_threshold(model, volumes, quantile=0.0)
    png = tmp_path / "slice.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(png)
    with pytest.raises(ValueError, match=r"slice\.png' is a 2D image, not a volume"):
        calibrate_volume_threshold(model, [*volumes, png])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder '.*empty' holds no volume"):
        find_volumes([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.nii\.gz' does not exist"):
        find_volumes([tmp_path / "missing.nii.gz"])
    with pytest.raises(FileNotFoundError, match="no models/model.pt or models/model.ts"):
        store_volume_calibration(tmp_path / "empty", VolumeCalibration(1.0, 0.95, 3, 2, "max", 3, 0.9))
    before = (root / "models" / "model.pt").read_bytes()
    with pytest.raises(SystemExit, match="medad-monai calibrate_volumes: .*is a 2D image"):
        Commands().calibrate_volumes(str(root), str(normals), str(png), **TINY)
    assert (root / "models" / "model.pt").read_bytes() == before  # nothing written on failure


def test_the_command_line_writes_the_demo_subjects_and_calibrates(tmp_path, capsys):
    root = _bundle(tmp_path / "bundle")
    Commands().demo_volumes(str(tmp_path / "vols"), domain=DOMAIN, subjects="200-202", size=64, slices=16)
    written = capsys.readouterr().out.split()
    assert [Path(p).name for p in written] == [f"{DOMAIN}_subject{s}_normal.nii.gz" for s in (200, 201, 202)]
    with pytest.raises(SystemExit, match="no 3D demo for domain 'fundus'"):
        Commands().demo_volumes(str(tmp_path / "vols"), domain="fundus")
    Commands().calibrate_volumes(str(root), str(tmp_path / "vols"), quantile=0.5, top_k=2, **TINY)
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    scores = sorted(float(line.split("\t")[0]) for line in out.splitlines() if "\t" in line)
    assert report["volume_calibration"]["threshold"] == pytest.approx(scores[1], rel=1e-5)  # the median of 3
    assert report["written"] == [str(root / "models" / "model.pt")]
    assert _model(root).volume_calibration.quantile == pytest.approx(0.5)
