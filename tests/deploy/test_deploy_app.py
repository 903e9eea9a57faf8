"""The MONAI Deploy application run in-process on CPU (arguments and the SDK's environment variables) with a tiny
DDAD bundle: outputs per study, their geometry, the DICOM SR and SEG read back, parity with the bundle's own
``inference.json``, a TorchScript model, a DICOM series with a stray file, and inputs with no readable study."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monai.deploy", reason="MONAI Deploy SDK not installed: pip install -e '.[deploy]' (see README)")
pytest.importorskip("highdicom", reason="highdicom not installed: pip install -e '.[deploy]' (see README)")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from bundle_testing import bundle_inference  # noqa: E402
from deploy_testing import (  # noqa: E402
    APP_DIR,
    REPO,
    assert_parity,
    read_json,
    read_map,
    write_volume,
)
from PIL import Image  # noqa: E402

from medad_monai.data.foreground import foreground  # noqa: E402
from medad_monai.deploy import NoStudyError, discover_studies, resolve_model_path  # noqa: E402
from medad_monai.deploy.app import REPORT_NAME, AnomalyDetectionApp, main  # noqa: E402
from medad_monai.deploy.options import parse_options  # noqa: E402
from medad_monai.inference import load_input  # noqa: E402

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
STEMS = {"demo_good", "demo_bad", "ct", "mr", "volumes__vol"}


@pytest.fixture(scope="module")
def app_run(ddad_bundle, mixed_inputs, tmp_path_factory) -> Path:
    """The application run once with -i/-o/-m on the mixed folder; returns the output folder. ``--mask-scope all``:
    the untrained model scores every study normal, and the default scope would leave every mask (and SEG) empty."""
    out = tmp_path_factory.mktemp("deploy_out") / "out"
    args = ["-i", str(mixed_inputs), "-o", str(out), "-m", str(ddad_bundle), "--device", "cpu", "--mask-scope", "all"]
    assert main(args) == 0
    return out


def expected_mask(summary: dict, data: np.ndarray) -> np.ndarray:
    """The core's mask rule: ``map > threshold``, cleared in slices scored normal unless the scope is ``all``."""
    t = summary["threshold"]
    mask = data > t
    if summary["mask_scope"] == "anomalous_slices":
        for k, score in enumerate(summary["slice_scores"]):
            if score <= t:
                if summary["axis"] is None:
                    mask[...] = False
                else:
                    mask[(slice(None),) * summary["axis"] + (k,)] = False
    return mask


def _sources(inputs: Path) -> dict[str, Path]:
    return {"ct": inputs / "ct.dcm", "mr": inputs / "mr.dcm"}


def test_every_study_has_map_mask_overlay_and_json(app_run):
    report = json.loads((app_run / REPORT_NAME).read_text())
    assert {s["name"] for s in report["studies"]} == STEMS
    assert report["failures"] == [] and report["stray_files"] == []
    for stem in STEMS:
        for suffix in ("_anomaly_map.nii.gz", "_anomaly_mask.nii.gz", "_overlay.png", "_anomaly.json"):
            assert (app_run / f"{stem}{suffix}").stat().st_size > 0, stem + suffix
    for stem in ("ct", "mr"):  # DICOM studies only
        assert (app_run / f"{stem}_sr.dcm").is_file() and (app_run / f"{stem}_seg.dcm").is_file()
    assert not list(app_run.glob("demo_good_*.dcm")) and not list(app_run.glob("volumes__vol_*.dcm"))
    assert not list(app_run.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_maps_are_float_with_the_input_geometry(app_run, mixed_inputs):
    for stem, source in {
        "volumes__vol": mixed_inputs / "volumes" / "vol.nii.gz",
        "ct": mixed_inputs / "ct.dcm",
    }.items():
        img = load_input(source)
        m = read_map(app_run, stem)
        assert m.get_data_dtype() == np.float32
        assert m.shape == tuple(img.shape[1:]), stem
        np.testing.assert_allclose(m.affine, img.affine.numpy(), atol=1e-4)
        data = m.get_fdata()
        assert np.unique(data).size > 100  # a float map, not a few integer levels (the SDK operator's uint8 cast)
    assert read_map(app_run, "volumes__vol").shape == (40, 48, 4)
    mask = nib.load(str(app_run / "volumes__vol_anomaly_mask.nii.gz"))
    assert mask.get_data_dtype() == np.uint8 and mask.shape == (40, 48, 4)


def test_json_has_score_threshold_decision_and_study(app_run, mixed_inputs):
    vol = read_json(app_run, "volumes__vol")
    assert len(vol["slice_scores"]) == 4 and vol["axis"] == 2  # 3D scored slice by slice
    assert vol["score"] == pytest.approx(max(vol["slice_scores"]))
    for stem in STEMS:
        s = read_json(app_run, stem)
        assert s["threshold"] == pytest.approx(0.502) and s["decision"] == int(s["score"] > 0.502)
        assert s["model"]["name"] == "DDAD-ASR anomaly detection"
        mask = nib.load(str(app_run / f"{stem}_anomaly_mask.nii.gz")).get_fdata()
        assert s["mask_scope"] == "all" and mask.any()
        expected = read_map(app_run, stem).get_fdata() > 0.502
        if s["axis"] is not None:  # a volume's label stays inside the body (the foreground of its slices)
            vol = np.asarray(nib.load(str(mixed_inputs / "volumes" / "vol.nii.gz")).dataobj, dtype=np.float32)
            window = (float(vol.min()), float(vol.max()))
            expected &= np.stack([foreground(vol[:, :, k], window) for k in range(vol.shape[2])], axis=2)
        np.testing.assert_array_equal(mask, expected)
        assert s["anomalous_pixels"] == int(mask.sum())
    ct = read_json(app_run, "ct")
    src = pydicom.dcmread(mixed_inputs / "ct.dcm", stop_before_pixels=True)
    assert ct["study"]["study_instance_uid"] == src.StudyInstanceUID
    assert ct["study"]["series_instance_uid"] == src.SeriesInstanceUID
    assert "dicom_outputs" not in ct  # written later and possibly failing: the run report lists what exists
    files = {s["name"]: s["files"] for s in json.loads((app_run / REPORT_NAME).read_text())["studies"]}
    assert (files["ct"]["sr"], files["ct"]["seg"]) == ("ct_sr.dcm", "ct_seg.dcm")
    assert all((app_run / name).is_file() for study in files.values() for name in study.values())


def test_overlay_png_is_readable(app_run):
    png = Image.open(app_run / "ct_overlay.png")
    assert png.mode == "RGB" and png.size == (128, 128)
    assert np.asarray(png).std() > 0


@pytest.mark.parametrize("stem", ["ct", "mr"])
def test_dicom_sr_reads_back_in_the_source_study(app_run, mixed_inputs, stem):
    src = pydicom.dcmread(_sources(mixed_inputs)[stem])
    summary = read_json(app_run, stem)
    sr = hd.sr.srread(app_run / f"{stem}_sr.dcm")
    assert sr.Modality == "SR" and sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    ref_series = evidence.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    items = {it.ConceptNameCodeSequence[0].CodeMeaning: it for it in sr.ContentSequence}
    assert float(items["Anomaly score"].MeasuredValueSequence[0].NumericValue) == pytest.approx(
        summary["score"], rel=1e-6
    )
    assert float(items["Anomaly decision threshold"].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.502)
    finding = items["Finding"].ConceptCodeSequence[0].CodeMeaning
    assert finding == ("Abnormal" if summary["decision"] == 1 else "Normal")
    assert items["Algorithm Name"].TextValue == "DDAD-ASR anomaly detection"
    assert items["Source of Measurement"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # the private codes of the score and threshold are declared (Coding Scheme Identification Sequence)
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert (
        scheme.CodingSchemeDesignator
        == "99MEDAD"
        == items["Anomaly score"].ConceptNameCodeSequence[0]["CodingSchemeDesignator"].value
    )


@pytest.mark.parametrize("stem", ["ct", "mr"])
def test_dicom_seg_reads_back_with_the_thresholded_map(app_run, mixed_inputs, stem):
    src = pydicom.dcmread(_sources(mixed_inputs)[stem])
    seg = hd.seg.segread(app_run / f"{stem}_seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "anomaly"
    frames = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    ours = nib.load(str(app_run / f"{stem}_anomaly_mask.nii.gz")).get_fdata()
    assert frames.shape == (1, src.Rows, src.Columns, 1)
    assert ours.any() and not ours.all()  # a mask worth comparing
    np.testing.assert_array_equal(frames[0, :, :, 0], ours.T)  # MONAI's (columns, rows) -> DICOM (rows, columns)


def test_parity_with_the_bundle_inference_config(app_run, ddad_bundle, mixed_inputs, tmp_path):
    """2D inputs: the bundle's inference.json on the same files; the volume: on each of its slices as 2D NIfTI."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in mixed_inputs.iterdir():
        if f.is_file():
            shutil.copy(f, flat / f.name)
    assert_parity(app_run, bundle_inference(ddad_bundle, flat, tmp_path / "ref"))

    img = nib.load(str(mixed_inputs / "volumes" / "vol.nii.gz"))
    slices = tmp_path / "slices"
    slices.mkdir()
    for k in range(img.shape[2]):
        nib.save(nib.Nifti1Image(img.get_fdata()[:, :, k].astype(np.float32), img.affine), str(slices / f"s{k}.nii.gz"))
    ref = bundle_inference(ddad_bundle, slices, tmp_path / "ref_slices")
    ours = read_map(app_run, "volumes__vol").get_fdata()
    summary = read_json(app_run, "volumes__vol")
    for k in range(img.shape[2]):
        assert np.abs(ours[:, :, k] - ref[f"s{k}"]["map"]).max() <= 1e-5
        assert summary["slice_scores"][k] == pytest.approx(ref[f"s{k}"]["score"], abs=1e-5)


def test_environment_variables_and_torchscript_model(app_run, ddad_bundle, mixed_inputs, tmp_path, monkeypatch, capsys):
    """HOLOSCAN_INPUT_PATH/OUTPUT_PATH/MODEL_PATH and MEDAD_DEPLOY_* as a MAP sets them, with an exported
    TorchScript in a MAP-style models folder: same maps as the eager run, volume score the mean of slices."""
    from monai.bundle import ckpt_export

    models = tmp_path / "models"
    models.mkdir()
    ckpt_export(
        net_id="network_def",
        filepath=str(models / "model.ts"),
        ckpt_file=str(ddad_bundle / "models" / "model.pt"),
        meta_file=str(ddad_bundle / "configs" / "metadata.json"),
        config_file=str(ddad_bundle / "configs" / "inference.json"),
        bundle_root=str(ddad_bundle),
    )
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(mixed_inputs / "volumes" / "vol.nii.gz", inputs / "vol.nii.gz")
    shutil.copy(mixed_inputs / "ct.dcm", inputs / "ct.dcm")
    out = tmp_path / "out"
    monkeypatch.setenv("HOLOSCAN_INPUT_PATH", str(inputs))
    monkeypatch.setenv("HOLOSCAN_OUTPUT_PATH", str(out))
    monkeypatch.setenv("HOLOSCAN_MODEL_PATH", str(models))
    monkeypatch.setenv("MEDAD_DEPLOY_VOLUME_REDUCTION", "mean")
    monkeypatch.setenv("MEDAD_DEPLOY_DEVICE", "cpu")
    monkeypatch.delenv("MEDAD_TRUST_EMBEDDED_CONFIG", raising=False)
    assert main([]) == 1  # a bare model.ts is data, not code: refused with a one-line error naming the option
    assert "--trust-model-config" in capsys.readouterr().err
    monkeypatch.setenv("MEDAD_DEPLOY_TRUST_MODEL_CONFIG", "1")  # the packager's decision, as a MAP would set it
    opts = parse_options([])
    assert opts.trust_model_config
    assert (opts.input, opts.output, opts.model, opts.scoring.volume_reduction) == (inputs, out, models, "mean")
    assert main([]) == 0
    vol = read_json(out, "vol")
    assert vol["volume_reduction"] == "mean" and vol["score"] == pytest.approx(np.mean(vol["slice_scores"]))
    assert vol["model"]["model_file"].endswith("model.ts")
    for stem in ("vol", "ct"):  # the default mask scope: no mask where the slice is scored normal
        summary = read_json(out, stem)
        assert summary["mask_scope"] == "anomalous_slices"
        mask = nib.load(str(out / f"{stem}_anomaly_mask.nii.gz")).get_fdata()
        np.testing.assert_array_equal(mask, expected_mask(summary, read_map(out, stem).get_fdata()))
    assert not nib.load(str(out / "ct_anomaly_mask.nii.gz")).get_fdata().any() and read_json(out, "ct")["decision"] == 0
    eager = read_json(app_run, "volumes__vol")
    assert vol["slice_scores"] == pytest.approx(eager["slice_scores"], abs=1e-5)
    for stem, ref in (("vol", "volumes__vol"), ("ct", "ct")):
        diff = np.abs(read_map(out, stem).get_fdata() - read_map(app_run, ref).get_fdata()).max()
        assert diff <= 1e-5, (stem, diff)
    assert (out / "ct_sr.dcm").is_file() and (out / "ct_seg.dcm").is_file()


def test_invalid_options_are_named(tmp_path):
    env = {"HOLOSCAN_INPUT_PATH": str(tmp_path), "MEDAD_DEPLOY_AXIS": "5"}
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        parse_options([], env=env)
    with pytest.raises(ValueError, match="MEDAD_DEPLOY_TOP_K='three'"):
        parse_options([], env={"MEDAD_DEPLOY_TOP_K": "three"})
    with pytest.raises(ValueError, match="volume_reduction must be one of .*MEDAD_DEPLOY_"):
        parse_options([], env={"MEDAD_DEPLOY_VOLUME_REDUCTION": "median"})
    with pytest.raises(ValueError, match="mask_scope must be one of"):
        parse_options([], env={"MEDAD_DEPLOY_MASK_SCOPE": "some"})
    with pytest.raises(ValueError, match="MEDAD_DEPLOY_STRICT='maybe'"):
        parse_options([], env={"MEDAD_DEPLOY_STRICT": "maybe"})
    with pytest.raises(ValueError, match="min_relative_body must be a fraction in .*MEDAD_DEPLOY_"):
        parse_options([], env={"MEDAD_DEPLOY_MIN_RELATIVE_BODY": "1.5"})
    assert parse_options(["--min-relative-body", "0"], env={}).scoring.min_relative_body == 0.0
    assert parse_options([], env={"MEDAD_DEPLOY_MIN_RELATIVE_BODY": "0.8"}).scoring.min_relative_body == 0.8
    opts = parse_options(["--axis", "0", "-i", "x"], env={**env, "MEDAD_DEPLOY_TOP_K": "2"})
    assert (opts.scoring.axis, opts.scoring.top_k, opts.input, opts.model) == (
        0,
        2,
        Path("x"),
        Path("models"),
    )  # args win
    assert not opts.strict
    assert parse_options([], env={"MEDAD_DEPLOY_STRICT": "yes"}).strict and parse_options(["--strict"]).strict


def _write_series(folder: Path) -> list[Path]:
    """A 3-slice CT series from CT_small.dcm (different pixels per slice, file names against position order)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    series_uid = generate_uid()
    paths = []
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, 7, k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 5.0 * k]
        ds.PixelData = np.roll(ds.pixel_array, 40 * k, axis=1).astype(ds.pixel_array.dtype).tobytes()
        path = folder / f"img_{3 - k}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def test_dicom_series_with_a_stray_file(ddad_bundle, tmp_path, caplog):
    """A stray non-DICOM file beside a series: the series is scored (3 slices, one SEG frame per instance, in the
    right order) and the stray file is reported in the log, the study's JSON and the run report."""
    inputs = tmp_path / "in"
    paths = _write_series(inputs / "series")
    (inputs / "series" / "notes.txt").write_text("not a DICOM file")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        assert main(["-i", str(inputs), "-o", str(out), "-m", str(ddad_bundle), "--mask-scope", "all"]) == 0
    assert "notes.txt" in caplog.text
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["stray_files"] == [{"path": str(inputs / "series" / "notes.txt"), "reason": "not a DICOM file"}]
    stem = "series__series7"
    assert [s["name"] for s in report["studies"]] == [stem]
    summary = read_json(out, stem)
    assert summary["study"]["stray_files"] == report["stray_files"]
    assert len(summary["slice_scores"]) == 3 and read_map(out, stem).shape == (128, 128, 3)

    mask = nib.load(str(out / f"{stem}_anomaly_mask.nii.gz")).get_fdata()
    volume = load_input(inputs / "series")[0].numpy()  # MONAI's order of the slices
    seg = hd.seg.segread(out / f"{stem}_seg.dcm")
    assert seg.NumberOfFrames == 3
    instances = {}  # SOP Instance UID -> the instance's intensities, (rows, columns)
    for p in paths:
        ds = pydicom.dcmread(p)
        instances[ds.SOPInstanceUID] = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for uid, pixels in instances.items():
        (k,) = [k for k in range(3) if np.allclose(volume[:, :, k].T, pixels)]
        frame = seg.get_pixels_by_source_instance([uid], segment_numbers=[1])[0, :, :, 0]
        np.testing.assert_array_equal(frame, mask[:, :, k].T)
    sr = hd.sr.srread(out / f"{stem}_sr.dcm")
    refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert {r.ReferencedSOPInstanceUID for r in refs} == set(instances)
    # the SR's image reference is the instance holding the most anomalous slice
    top = summary["top_slice"]
    (top_uid,) = [uid for uid, pixels in instances.items() if np.allclose(volume[:, :, top].T, pixels)]
    items = {it.ConceptNameCodeSequence[0].CodeMeaning: it for it in sr.ContentSequence}
    assert items["Source of Measurement"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == top_uid


def test_seg_frames_follow_each_instance_position_and_orientation(ddad_bundle, tmp_path):
    """An untrained network's masks hardly depend on the image, so give the SEG builder a mask drawn from each
    slice's own pixels: every SEG frame must then equal its own instance's pixels, in DICOM (rows, columns)."""
    from medad_monai.deploy import discover_studies, score_study
    from medad_monai.deploy.dicom_reports import build_seg, read_source_datasets
    from medad_monai.inference import load_bundle_model

    paths = _write_series(tmp_path / "series")
    (study,), _ = discover_studies(tmp_path / "series")
    scored = score_study(load_bundle_model(ddad_bundle, device="cpu"), study)
    image = scored.result.image  # (columns, rows, slices) as MONAI reads it
    scored.result.mask = (image > np.median(image, axis=(0, 1), keepdims=True)).astype(np.uint8)
    seg_path = tmp_path / "seg.dcm"
    build_seg(scored, read_source_datasets(study.files)).save_as(seg_path)
    seg = hd.seg.segread(seg_path)
    for p in paths:
        ds = pydicom.dcmread(p)
        pixels = ds.pixel_array.astype(np.float32)
        frame = seg.get_pixels_by_source_instance([ds.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
        np.testing.assert_array_equal(frame, pixels > np.median(pixels))


def test_non_image_dicom_is_a_stray_file(app_run, tmp_path):
    """Our own SR beside an image: a DICOM without pixels is reported, not scored."""
    shutil.copy(app_run / "ct_sr.dcm", tmp_path / "report.dcm")
    shutil.copy(app_run / "ct_overlay.png", tmp_path / "picture.png")
    studies, strays = discover_studies(tmp_path)
    assert [s.name for s in studies] == ["picture"]
    assert [s.path.name for s in strays] == ["report.dcm"] and "without an image" in strays[0].reason


def test_no_readable_study_is_an_error_naming_the_folder(ddad_bundle, tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    opts = parse_options(["-i", str(empty), "-o", str(tmp_path / "out"), "-m", str(ddad_bundle)])
    with pytest.raises(NoStudyError, match=r"no readable study in '.*nothing_here'.*readme.txt"):
        AnomalyDetectionApp(options=opts).run()
    # as a command (the README's): nonzero exit and the folder named on stderr
    proc = subprocess.run(
        [sys.executable, str(APP_DIR), "-i", str(empty), "-o", str(tmp_path / "out"), "-m", str(ddad_bundle)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "no readable study" in proc.stderr and "nothing_here" in proc.stderr


def test_missing_model_is_an_error(mixed_inputs, tmp_path, capsys):
    (tmp_path / "models").mkdir()
    assert main(["-i", str(mixed_inputs), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "models")]) == 1
    assert "models' holds no bundle" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "configs").mkdir(parents=True)
    (broken / "configs" / "inference.json").write_text("{}")
    assert main(["-i", str(mixed_inputs), "-o", str(tmp_path / "out"), "-m", str(broken)]) == 1
    assert "broken" in capsys.readouterr().err


def test_model_path_forms(ddad_bundle, tmp_path):
    assert resolve_model_path(ddad_bundle) == ddad_bundle  # a bundle folder
    models = tmp_path / "models"
    models.mkdir()
    (models / "ddad").symlink_to(ddad_bundle, target_is_directory=True)
    assert resolve_model_path(models) == models / "ddad"  # a MAP models folder holding one bundle
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty' holds no bundle"):
        resolve_model_path(tmp_path / "empty")
    write_volume(tmp_path / "unused.nii.gz")  # a folder with data but no bundle is still not a model
    with pytest.raises(FileNotFoundError, match="holds no bundle"):
        resolve_model_path(tmp_path)


def test_a_corrupt_study_is_reported_and_the_others_processed(ddad_bundle, tmp_path, capsys):
    inputs = tmp_path / "in"
    write_volume(inputs / "good.nii.gz")
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(ddad_bundle), "--device", "cpu"]) == 0
    report = json.loads((out / REPORT_NAME).read_text())
    assert [s["name"] for s in report["studies"]] == ["good"]
    (failure,) = report["failures"]
    assert failure["study"] == "broken" and failure["stage"] == "inference" and "broken.nii.gz" in failure["error"]
    assert not list(out.glob("broken_*"))
    # --strict: the same outputs and report, but exit status 2 and the failed study named on stderr
    strict_out = tmp_path / "strict"
    args = ["-i", str(inputs), "-o", str(strict_out), "-m", str(ddad_bundle), "--device", "cpu", "--strict"]
    assert main(args) == 2
    assert "1 study failed (broken) while 1 scored" in capsys.readouterr().err
    assert sorted(p.name for p in strict_out.iterdir()) == sorted(p.name for p in out.iterdir())
    # nothing scored at all: exit status 1, the report still says why
    (inputs / "good.nii.gz").unlink()
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(ddad_bundle), "--device", "cpu"]) == 1
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["studies"] == [] and [f["study"] for f in report["failures"]] == ["broken"]


def test_non_conformant_dicom_gets_its_sr_and_a_reported_seg_failure(ddad_bundle, tmp_path, capsys):
    # a single-slice MR export without Type 2 patient/study attributes and without a frame of reference: the SR is
    # written (the missing Type 2 attributes empty, as the standard allows); the SEG cannot reference an image
    # without a frame of reference: a reported failure of that study (exit 2 with --strict), never a listed file
    from pydicom.data import get_testdata_file

    inputs = tmp_path / "in"
    inputs.mkdir()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "FrameOfReferenceUID"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(inputs / "bare.dcm")
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(ddad_bundle), "--device", "cpu"]) == 0
    sr = hd.sr.srread(out / "bare_sr.dcm")
    assert sr.PatientBirthDate == "" and sr.PatientID == ds.PatientID and sr.StudyInstanceUID == ds.StudyInstanceUID
    assert not (out / "bare_seg.dcm").exists()
    report = json.loads((out / REPORT_NAME).read_text())
    (study,) = report["studies"]
    assert "seg" not in study["files"] and study["files"]["sr"] == "bare_sr.dcm"
    (failure,) = report["failures"]
    assert failure["stage"] == "dicom seg" and "has no FrameOfReferenceUID" in failure["error"]
    strict = ["-i", str(inputs), "-o", str(tmp_path / "strict"), "-m", str(ddad_bundle), "--device", "cpu", "--strict"]
    assert main(strict) == 2


@pytest.mark.parametrize("problem", ["localizer", "gap"])
def test_a_series_that_is_not_one_regular_stack_is_refused_with_its_reason(ddad_bundle, tmp_path, problem):
    # stacked as it is, a localizer's slice would be scored as a parallel slice, and a 200 mm gap spread evenly
    # over the stack (68 mm spacing) would put SEG frames on the wrong instances
    inputs = tmp_path / "in"
    paths = _write_series(inputs / "series")
    ds = pydicom.dcmread(paths[2])
    if problem == "localizer":
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # sagittal among axials
    else:
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 200.0]
    ds.save_as(paths[2])
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(ddad_bundle), "--device", "cpu"]) == 1  # none scored
    (failure,) = json.loads((out / REPORT_NAME).read_text())["failures"]
    expected = "3 instances have 2 image orientations" if problem == "localizer" else "slice spacing varies from 5"
    assert (
        failure["stage"] == "inference" and "SeriesGeometryError" in failure["error"] and expected in failure["error"]
    )
    assert not list(out.glob("series*"))


def test_a_volume_is_decided_with_the_models_volume_threshold(ddad_bundle, mixed_inputs, tmp_path):
    """A bundle holding a volume threshold (written as ``medad-monai calibrate_volumes`` writes it): a volume study's
    JSON carries it and is decided by it, a 2D study keeps the image threshold."""
    from medad_monai.inference.volume_calibration import store_volume_calibration
    from medad_monai.networks.volume_threshold import VolumeCalibration

    bundle = tmp_path / "ddad"
    shutil.copytree(ddad_bundle, bundle)
    store_volume_calibration(bundle, VolumeCalibration(0.25, 0.95, 8, 2, "max", 3, 0.9))  # the app's options
    inputs = tmp_path / "inputs"
    (inputs / "volumes").mkdir(parents=True)
    shutil.copy(mixed_inputs / "volumes" / "vol.nii.gz", inputs / "volumes")
    shutil.copy(mixed_inputs / "ct.dcm", inputs)
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(bundle), "--device", "cpu"]) == 0
    vol, ct = read_json(out, "volumes__vol"), read_json(out, "ct")
    assert (vol["threshold_source"], vol["threshold"]) == ("volume", pytest.approx(0.25))
    assert vol["decision"] == int(vol["score"] > 0.25)
    assert vol["model"]["volume_calibration"]["num_volumes"] == 8
    assert (ct["threshold_source"], ct["threshold"]) == ("image", pytest.approx(0.502))
