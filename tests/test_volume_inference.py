"""The SDK-free serving core: loading a bundle, scoring 2D images and 3D volumes slice by slice with the input's
geometry kept, parity with the bundle's own inference config, thresholds, writers and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import bundle_inference, export_torchscript
from PIL import Image

from medad_monai.inference import (
    AnomalyResult,
    BundleLoadError,
    load_bundle_model,
    reduce_scores,
    score_volume,
    write_result,
)
from medad_monai.networks.ddad import DDAD
from medad_monai.transforms import ImageReadError

REPO = Path(__file__).resolve().parents[1]
DDAD_CONFIGS = REPO / "bundles" / "ddad" / "configs"
# a slim network (a quarter of the channels) keeps the tests fast on 2 CPU cores; the configs are the bundle's own
TINY = {"num_members": 2, "network_def#multiplier": 0.25}


def make_ddad_bundle(root: Path, threshold: float = 0.5, seed: int = 0) -> Path:
    """A DDAD bundle root (the repository's configs) with an untrained 2-member model and a stored threshold."""
    shutil.copytree(DDAD_CONFIGS, root / "configs")
    (root / "models").mkdir(parents=True)
    torch.manual_seed(seed)
    net = DDAD(num_members=2, multiplier=0.25)
    net.has_udm.fill_(True)
    net.threshold.fill_(threshold)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_ddad_bundle(tmp_path_factory.mktemp("ddad_serve"))


@pytest.fixture(scope="module")
def model(bundle):
    return load_bundle_model(bundle, device="cpu", overrides=TINY)


def _body(shape: tuple[int, int]) -> np.ndarray:
    """The in-plane body outline of the test volume: an ellipse off the image border."""
    x, y = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((x - 20) / 16) ** 2 + ((y - 24) / 19) ** 2 < 1


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 40x48x6 NIfTI volume: a textured body in every slice on a near-zero background, a bright blob in slices 2
    and 3 (which hold the volume's maximum, so that their own min-max equals the volume's), a non-trivial affine."""
    rng = np.random.default_rng(0)
    vol = rng.random((40, 48, 6)).astype(np.float32) * 0.02
    body = _body((40, 48))
    vol[body] = 0.8 + 0.2 * rng.random((int(body.sum()), 6)).astype(np.float32)
    vol[12:22, 15:25, 2:4] += 4.0
    vol[0, 0, :], vol[20, 24, 2:4] = 0.0, 5.0
    affine = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    path = tmp_path_factory.mktemp("vol") / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return path, vol, affine


@pytest.fixture(scope="module")
def vol_result(model, volume) -> AnomalyResult:
    return score_volume(model, volume[0])


def test_load_bundle_model_reads_reduction_size_and_threshold(model, bundle):
    assert model.reduction == "mean"  # the DDAD network's score_reduction
    assert (model.channels, model.spatial_size) == (1, (64, 64))
    assert model.threshold == pytest.approx(0.5)
    assert not model.network.training and model.device == torch.device("cpu")
    assert model.root == bundle.resolve() and len(model.model_version) == 16
    assert model.describe()["name"] == "DDAD-ASR anomaly detection"


def test_model_setup_runs_only_what_the_config_lists(bundle):
    """Serving sets up the model state with the config's explicit ``model_setup`` entries, nothing found by duck
    typing: DDAD lists none; a listed component without ``apply()`` is a named error."""
    assert load_bundle_model(bundle, device="cpu", overrides=TINY, setup=True).threshold == pytest.approx(0.5)
    bad = {**TINY, "model_setup": [{"_target_": "builtins.dict"}]}
    with pytest.raises(BundleLoadError, match=r"model set-up model_setup#0 failed: AttributeError"):
        load_bundle_model(bundle, device="cpu", overrides=bad, setup=True)
    load_bundle_model(bundle, device="cpu", overrides=bad, setup=False)  # not asked for: not run
    with pytest.raises(ValueError, match="setup must be"):
        load_bundle_model(bundle, device="cpu", overrides=TINY, setup="always")


def test_missing_bundle_files_are_named(tmp_path):
    with pytest.raises(BundleLoadError, match="does not exist"):
        load_bundle_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleLoadError, match=r"empty.*configs/inference.json"):
        load_bundle_model(tmp_path / "empty")
    root = tmp_path / "nomodel"
    shutil.copytree(DDAD_CONFIGS, root / "configs")
    with pytest.raises(BundleLoadError, match=r"nomodel.*models/model.pt"):
        load_bundle_model(root, device="cpu")


def test_volume_map_mask_and_scores_keep_the_input_geometry(vol_result, volume):
    path, vol, affine = volume
    r = vol_result
    assert isinstance(r, AnomalyResult)
    assert r.map.shape == vol.shape and r.mask.shape == vol.shape
    assert r.map.dtype == np.float32 and r.mask.dtype == np.uint8
    np.testing.assert_allclose(r.affine, affine, atol=1e-6)
    assert len(r.slice_scores) == 6 and r.axis == 2
    assert r.score == max(r.slice_scores) and r.top_slice == int(np.argmax(r.slice_scores))
    assert r.decision == int(r.score > 0.5) and r.threshold == 0.5
    assert r.scored_slices == list(range(6))  # every slice holds the same body
    # the mask: map above the threshold, inside the body, in the slices whose own score is above it (a hand-built
    # reference)
    expected = ((r.map > 0.5) & _body((40, 48))[:, :, None]).astype(np.uint8)
    for k, s in enumerate(r.slice_scores):
        if s <= 0.5:
            expected[:, :, k] = 0
    np.testing.assert_array_equal(r.mask, expected)
    assert r.source == str(path) and r.summary()["mask_scope"] == "anomalous_slices"


@pytest.mark.parametrize("axis", [0, 1])
def test_axis_option_slices_along_the_chosen_axis(model, volume, axis):
    path, vol, _ = volume
    r = score_volume(model, path, axis=axis, batch_size=64)
    assert r.map.shape == vol.shape and len(r.slice_scores) == vol.shape[axis] and r.axis == axis


def test_volume_reductions(model, volume, vol_result):
    path, _, _ = volume
    r = score_volume(model, path, volume_reduction="topk", top_k=2)
    assert r.slice_scores == pytest.approx(vol_result.slice_scores, abs=1e-6)
    assert r.score == pytest.approx(np.mean(sorted(r.slice_scores)[-2:]))
    assert reduce_scores([1.0, 3.0, 2.0], "mean") == pytest.approx(2.0)
    assert reduce_scores([1.0, 3.0, 2.0], "max") == 3.0
    assert reduce_scores([1.0, 3.0, 2.0], "topk", top_k=10) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="volume_reduction"):
        score_volume(model, path, volume_reduction="median")


def test_array_input_slices_equal_2d_scoring(model, volume):
    """Slice k of the volume scored as a 2D array gives the same map and score as inside the volume (slice 2 spans
    the volume's intensity range, so its own scaling and the volume's are the same)."""
    _, vol, affine = volume
    r3 = score_volume(model, vol, affine=affine)
    np.testing.assert_allclose(r3.affine, affine)
    r2 = score_volume(model, vol[:, :, 2])
    assert r2.map.shape == (40, 48) and r2.axis is None and r2.slice_scores == [r2.score]
    np.testing.assert_allclose(r3.map[:, :, 2], r2.map, atol=1e-6)
    assert r3.slice_scores[2] == pytest.approx(r2.score, abs=1e-6)


def test_slice_maps_are_inverted_together_exactly_as_one_by_one(model, volume):
    """The slices of a volume share one inversion (their maps resized as one multi-channel image); each map equals
    the one ``Invertd`` gives the slice alone, and a slice with another original size is inverted on its own."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from medad_monai.inference.volume import _inversion_key, _invert_maps

    _, vol, _ = volume
    slices = [torch.as_tensor(vol[None, :, :, k]).float() for k in range(3)] + [torch.rand(1, 30, 52)]
    images = [model.image_transforms({"image": MetaTensor(s, meta={"filename_or_obj": "x"})})["image"] for s in slices]
    assert _inversion_key(images[0]) == _inversion_key(images[2]) != _inversion_key(images[3])
    preds = torch.rand(len(images), 1, *images[0].shape[-2:])
    inverter = Invertd(keys="pred", transform=model.image_transforms, orig_keys="image", nearest_interp=False)
    together = _invert_maps(inverter, images, preds)
    for image, pred, got in zip(images, preds, together):
        alone = torch.as_tensor(inverter({"image": image, "pred": MetaTensor(pred)})["pred"]).float()[0]
        assert got.shape == alone.shape == image.applied_operations[0]["orig_size"]
        torch.testing.assert_close(got, alone.as_subclass(torch.Tensor), rtol=0, atol=0)
    images[1].applied_operations[0]["class"] = "RandAffine"  # an inverse that may not treat channels alike
    assert _inversion_key(images[1]) is None


@pytest.mark.parametrize("channels", [1, 3])
def test_slices_are_resized_together_as_one_by_one(model, volume, channels):
    """The serving core resizes a batch of slices in one call (anti-aliased, as the bundle's Resized): every slice
    gets the values and the trace (which Invertd reads) it gets alone, for 1- and 3-channel policies; slices of
    different sizes fall back to one call each."""
    from monai.data import MetaTensor
    from monai.transforms import Compose, Resized

    from medad_monai.inference.volume import _inversion_key, _preprocess_slices
    from medad_monai.transforms import ChannelPolicyd, IntensityPolicyd

    _, vol, _ = volume
    chain = model.image_transforms
    if channels == 3:
        chain = Compose(
            [
                ChannelPolicyd("image", channels=3),
                Resized("image", spatial_size=(24, 24), mode="bilinear", anti_aliasing=True),
                IntensityPolicyd("image", minv=0.0, maxv=1.0),
            ]
        )
    meta = {"filename_or_obj": "x"}
    slices = [torch.as_tensor(vol[None, :, :, k]).float() for k in range(vol.shape[-1])]
    for batch in (slices, slices[:2] + [torch.rand(1, 30, 52)]):
        together = _preprocess_slices(chain, batch, meta)
        for s, got in zip(batch, together):
            alone = chain({"image": MetaTensor(s.clone(), meta=meta)})["image"]
            assert got["image"].shape == alone.shape and got["image"].shape[0] == channels
            assert (got["image"] - alone).abs().max() <= 1e-5
            assert _inversion_key(got["image"]) == _inversion_key(alone) is not None


def test_parity_with_the_bundle_inference_config(bundle, model, tmp_path):
    """Maps and scores equal those of ``inference.json`` run through MONAI's ConfigWorkflow on the same files."""
    from pydicom.data import get_testdata_file

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (70, 90), dtype=np.uint8)).save(inputs / "gray.png")
    Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(inputs / "rgb.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), inputs / "ct.dcm")
    rows = bundle_inference(bundle, inputs, tmp_path / "out", **TINY)
    assert len(rows) == 3
    for row in rows.values():
        ours = score_volume(model, row["filename"])
        assert ours.map.shape == row["map"].shape
        assert np.abs(ours.map - row["map"]).max() <= 1e-5
        assert ours.score == pytest.approx(row["score"], abs=1e-5)
        assert ours.decision == row["decision"]


def test_png_and_real_dicom_inputs(model, tmp_path):
    from pydicom.data import get_testdata_file

    png = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 50), dtype=np.uint8)).save(png)
    r = score_volume(model, png)
    assert r.map.shape == (50, 30) and r.axis is None  # MONAI reads PNG as (W, H)
    ct = score_volume(model, get_testdata_file("CT_small.dcm"))
    assert ct.map.shape == (128, 128) and np.isfinite(ct.score)
    assert ct.affine[0, 0] == pytest.approx(-0.661468, abs=1e-5)  # DICOM pixel spacing and LPS->RAS kept


def test_dicom_series_folder(model, tmp_path):
    """A 3-slice CT series (CT_small.dcm at three table positions) read by PydicomReader is scored per slice."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5.0 * k]
        ds.save_as(series / f"{k + 1}.dcm")
    (series / "notes.txt").write_text("not a DICOM file")  # a stray file beside the series is skipped
    r = score_volume(model, series)
    assert r.map.shape == (128, 128, 3) and len(r.slice_scores) == 3 and r.score == max(r.slice_scores)
    assert abs(r.affine[2, 2]) == pytest.approx(5.0, abs=1e-3)  # slice spacing from the positions


def test_threshold_override_and_uncalibrated_model(model, volume, tmp_path):
    path, _, _ = volume
    body = np.broadcast_to(_body((40, 48))[:, :, None], (40, 48, 6))
    low = score_volume(model, path, threshold=-1.0)
    assert low.threshold == -1.0 and low.decision == 1
    np.testing.assert_array_equal(low.mask, body)  # every voxel of the body, none outside it
    high = score_volume(model, path, threshold=2.0, pixel_threshold=-1.0, mask_scope="all")
    assert high.decision == 0 and high.is_anomalous is False
    np.testing.assert_array_equal(high.mask, body)
    # by default the label stays off the slices the model calls normal
    assert not score_volume(model, path, threshold=2.0, pixel_threshold=-1.0).mask.any()
    uncal = load_bundle_model(make_ddad_bundle(tmp_path / "uncal", threshold=float("nan")), "cpu", overrides=TINY)
    assert np.isnan(uncal.threshold)
    r = score_volume(uncal, path)
    # uncalibrated: decision -1 (as the bundle's ThresholdDecisiond), is_anomalous None, empty mask, JSON null
    assert r.decision == -1 and r.is_anomalous is None and not r.mask.any()
    assert r.summary()["threshold"] is None and r.summary()["calibrated"] is False
    json.loads(json.dumps(r.summary(), allow_nan=False))  # strict JSON: no NaN anywhere
    assert score_volume(uncal, path, threshold=0.1).decision in (0, 1)


def test_writers_produce_readable_files_with_the_input_geometry(model, vol_result, volume, tmp_path):
    path, vol, affine = volume
    r = vol_result
    files = write_result(r, tmp_path / "out")
    assert {p.name for p in files.values()} == {
        "vol_anomaly_map.nii.gz",
        "vol_anomaly_mask.nii.gz",
        "vol_overlay.png",
        "vol_anomaly.json",
    }
    m, k = nib.load(files["map"]), nib.load(files["mask"])
    assert m.shape == vol.shape and k.shape == vol.shape
    assert m.get_data_dtype() == np.float32 and k.get_data_dtype() == np.uint8
    np.testing.assert_allclose(m.affine, affine, atol=1e-5)
    np.testing.assert_allclose(k.affine, affine, atol=1e-5)
    np.testing.assert_allclose(m.get_fdata(), r.map, atol=1e-7)
    summary = json.loads(files["json"].read_text())
    assert summary["score"] == pytest.approx(r.score) and summary["threshold"] == 0.5
    assert len(summary["slice_scores"]) == 6 and summary["decision"] == r.decision
    assert summary["model"]["model_version"] == model.model_version and summary["source"] == str(path)
    png = Image.open(files["overlay"])
    assert png.mode == "RGB" and png.size == (40, 48)  # the top slice, shown rows x columns
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_unreadable_file_is_named(model, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        score_volume(model, bad)
    with pytest.raises(ImageReadError, match="missing.png"):
        score_volume(model, tmp_path / "missing.png")


def test_torchscript_bundle_matches_eager(bundle, model, volume, tmp_path):
    """A ``ckpt_export`` TorchScript (``model.ts``, alone or in a bundle folder) serves the same maps as eager."""
    ts = tmp_path / "alone" / "model.ts"
    ts.parent.mkdir()
    configs = bundle / "configs"
    export_torchscript(
        bundle, str(configs / "metadata.json"), str(configs / "inference.json"), ts, bundle_root=str(bundle), **TINY
    )
    # embedded metadata.json and inference.json: served only when trusted (parsing the config runs code)
    scripted = load_bundle_model(ts, device="cpu", trust_embedded_config=True)
    assert isinstance(scripted.network, torch.jit.ScriptModule) and scripted.model_file == ts
    assert scripted.reduction == "mean" and scripted.threshold == pytest.approx(0.5)
    _, vol, _ = volume
    ours, eager = score_volume(scripted, vol[:, :, 2]), score_volume(model, vol[:, :, 2])
    assert np.abs(ours.map - eager.map).max() <= 1e-5 and ours.score == pytest.approx(eager.score, abs=1e-5)


def test_a_bare_torchscript_config_runs_no_code_unless_trusted(bundle, tmp_path, monkeypatch):
    """A crafted ``model.ts`` whose embedded inference.json would write a marker file when parsed."""
    marker = tmp_path / "pwned"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["device"] = f"$open({str(marker)!r}, 'w').write('x') and torch.device('cpu')"
    crafted = tmp_path / "crafted_configs"
    crafted.mkdir()
    (crafted / "inference.json").write_text(json.dumps(config))
    ts = tmp_path / "download" / "model.ts"
    ts.parent.mkdir()
    export_torchscript(
        bundle, str(bundle / "configs" / "metadata.json"), str(crafted / "inference.json"), ts,
        bundle_root=str(bundle), device="$torch.device('cpu')", **TINY,
    )  # fmt: skip
    assert not marker.exists()
    monkeypatch.delenv("MEDAD_TRUST_EMBEDDED_CONFIG", raising=False)
    with pytest.raises(BundleLoadError, match=r"model\.ts' has no configs/.*run as Python code.*trust"):
        load_bundle_model(ts)
    assert not marker.exists()  # refused before anything was parsed
    monkeypatch.setenv("MEDAD_TRUST_EMBEDDED_CONFIG", "1")  # the user's explicit decision: then it is parsed
    load_bundle_model(ts)
    assert marker.read_text() == "x"


@pytest.mark.slow
def test_parity_with_the_d24fad_inference_config(tmp_path):
    """D²4FAD (support set set up by the config's own handler, max reduction) served equals its inference config."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / "d24fad" / "configs"
    if not (configs / "inference.json").is_file():
        pytest.skip("no D24FAD inference config in this checkout")
    root = tmp_path / "d24fad"
    shutil.copytree(configs, root / "configs")
    (root / "models").mkdir()
    rng = np.random.default_rng(3)
    support, inputs = tmp_path / "support", tmp_path / "inputs"
    for folder, n in ((support, 3), (inputs, 2)):
        folder.mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48), dtype=np.uint8)).save(folder / f"{i}.png")
    overrides = {"num_support": 2}
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), "support_dir": str(support), **overrides})
    network = parser.get_parsed_content("network_def")
    parser.get_parsed_content("support_loader").apply()  # as training ends: support set and threshold stored
    stored = float(network.threshold)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    # by default the config serves the stored support set and threshold, as Label and Deploy do
    rows = bundle_inference(root, inputs, tmp_path / "out", **overrides)
    served = load_bundle_model(root, "cpu", overrides=overrides)
    assert served.reduction == "max" and served.channels == 3 and served.threshold == pytest.approx(stored)
    assert len(rows) == 2
    for row in rows.values():
        ours = score_volume(served, row["filename"])
        assert ours.map.shape == row["map"].shape and np.abs(ours.map - row["map"]).max() <= 1e-5
        assert ours.score == pytest.approx(row["score"], abs=1e-5)
        assert ours.threshold == pytest.approx(row["threshold"], abs=1e-6) and ours.decision == row["decision"]


def test_served_d24fad_keeps_its_stored_support_unless_setup_is_forced(tmp_path):
    """``setup="auto"``: a model that carries a support set is served with it (no support images needed);
    ``setup=True`` re-selects the support from the config's ``support_dir`` (a new target)."""
    root = tmp_path / "d24fad"
    shutil.copytree(REPO / "bundles" / "d24fad" / "configs", root / "configs")
    (root / "models").mkdir()
    rng = np.random.default_rng(5)
    folders = {}
    for name in ("a", "b"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for i in range(2):
            img = rng.integers(0, 255, (40, 48), dtype=np.uint8) // (1 if name == "a" else 4)
            Image.fromarray(img).save(folders[name] / f"{i}.png")
    base = {"num_support": 2, "teacher_weights": "random"}
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), **base})
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    with_a = load_bundle_model(root, "cpu", overrides={**base, "support_dir": str(folders["a"])})  # no support yet
    assert bool(with_a.network.has_support)
    torch.save(with_a.network.state_dict(), root / "models" / "model.pt")  # as training stores it

    auto = load_bundle_model(root, "cpu", overrides={**base, "support_dir": str(folders["b"])})
    forced = load_bundle_model(root, "cpu", overrides={**base, "support_dir": str(folders["b"])}, setup=True)
    stored = with_a.network.support_feat_0
    assert torch.equal(auto.network.support_feat_0, stored)
    assert not torch.equal(forced.network.support_feat_0, stored)
    with pytest.raises(ValueError, match="setup must be"):
        load_bundle_model(root, "cpu", overrides=base, setup="sometimes")
