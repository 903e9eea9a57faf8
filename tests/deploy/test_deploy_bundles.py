"""Parity of the MONAI Deploy application with each bundle's own ``inference.json`` (DDAD is covered in
test_deploy_app.py): D²4FAD (support set and threshold set up by the config's own handler, max reduction) and PDD
(random teachers; its model.pt holds the teachers, so one small input set)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai.deploy", reason="MONAI Deploy SDK not installed: pip install -e '.[deploy]' (see README)")
pytest.importorskip("highdicom", reason="highdicom not installed: pip install -e '.[deploy]' (see README)")

import highdicom as hd  # noqa: E402
import pydicom  # noqa: E402
from bundle_testing import bundle_inference  # noqa: E402
from deploy_testing import assert_parity, make_bundle, read_json, write_pictures  # noqa: E402

from medad_monai.deploy.app import REPORT_NAME, main  # noqa: E402


def _inputs(folder: Path) -> Path:
    """Two PNGs and the real CT_small.dcm: what the bundles' inference and the application both read."""
    from pydicom.data import get_testdata_file

    write_pictures(folder, n=2, seed=5)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    return folder


def _run_and_compare(bundle: Path, tmp_path: Path) -> Path:
    inputs = _inputs(tmp_path / "inputs")
    out = tmp_path / "out"
    assert main(["-i", str(inputs), "-o", str(out), "-m", str(bundle), "--device", "cpu"]) == 0
    theirs = bundle_inference(bundle, inputs, tmp_path / "ref")
    assert set(theirs) == {"pic0", "pic1", "ct"}
    assert_parity(out, theirs)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["failures"] == [] and len(report["studies"]) == 3
    for stem, ref in theirs.items():
        if np.isfinite(ref["threshold"]):
            assert read_json(out, stem)["threshold"] == pytest.approx(ref["threshold"], abs=1e-6)
    src = pydicom.dcmread(inputs / "ct.dcm", stop_before_pixels=True)
    assert hd.sr.srread(out / "ct_sr.dcm").StudyInstanceUID == src.StudyInstanceUID
    assert hd.seg.segread(out / "ct_seg.dcm").StudyInstanceUID == src.StudyInstanceUID
    return out


def test_d24fad_parity(tmp_path):
    support = tmp_path / "support"
    write_pictures(support, n=3, seed=9)
    bundle = make_bundle("d24fad", tmp_path / "d24fad", support_dir=support)
    out = _run_and_compare(bundle, tmp_path)
    summary = read_json(out, "ct")
    assert summary["model"]["reduction"] == "max" and summary["threshold"] is not None  # calibrated on the support
    assert summary["score"] == pytest.approx(max(summary["slice_scores"]))


def test_pdd_parity(tmp_path):
    bundle = make_bundle("pdd", tmp_path / "pdd", threshold=0.5)
    out = _run_and_compare(bundle, tmp_path)
    assert read_json(out, "pic0")["model"]["name"].lower().startswith("pdd")
