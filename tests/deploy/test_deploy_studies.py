"""Study discovery of the MONAI Deploy application: DICOM recognised by content and grouped by series, names unique
and file-system safe, stray and hidden files, and a clear error when nothing is readable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai.deploy", reason="MONAI Deploy SDK not installed: pip install -e '.[deploy]' (see README)")
pytest.importorskip("highdicom", reason="highdicom not installed: pip install -e '.[deploy]' (see README)")

import pydicom  # noqa: E402
from deploy_testing import write_pictures, write_volume  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from medad_monai.deploy import NoStudyError, discover_studies  # noqa: E402


def _instance(path: Path, series_uid: str, z: float) -> str:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 3
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], z]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return ds.StudyInstanceUID


def test_mixed_folder_is_grouped_into_named_studies(tmp_path):
    uid = generate_uid()
    study_uid = _instance(tmp_path / "pat" / "a" / "IM0001", uid, 0.0)  # no suffix: recognised by content
    _instance(tmp_path / "pat" / "b" / "IM0002", uid, 5.0)  # the same series in another folder
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr.dcm")
    write_pictures(tmp_path / "pics", n=2)
    write_volume(tmp_path / "vol.nii.gz")
    (tmp_path / "vol.png").write_bytes((tmp_path / "pics" / "pic0.png").read_bytes())  # same stem as vol.nii.gz
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.png").write_bytes(b"ignored")
    (tmp_path / "pat" / "a" / "notes.txt").write_text("stray")

    studies, strays = discover_studies(tmp_path)
    by_name = {s.name: s for s in studies}
    assert set(by_name) == {"pat__a__series3", "mr", "pics__pic0", "pics__pic1", "vol", "vol_2"}
    series = by_name["pat__a__series3"]
    assert series.kind == "dicom" and len(series.files) == 2
    assert (series.study_uid, series.series_uid, series.modality) == (study_uid, uid, "CT")
    assert [s.path.name for s in series.strays] == ["notes.txt"]
    assert {by_name["vol"].kind, by_name["vol_2"].kind} == {"nifti", "picture"}
    assert by_name["mr"].is_dicom and by_name["mr"].study_uid == pydicom.dcmread(tmp_path / "mr.dcm").StudyInstanceUID
    assert [(s.path.name, s.reason) for s in strays] == [("notes.txt", "not a DICOM file")]
    assert series.describe()["stray_files"] == [
        {"path": str(tmp_path / "pat" / "a" / "notes.txt"), "reason": strays[0].reason}
    ]


def test_a_single_file_input(tmp_path):
    path = tmp_path / "one.png"
    write_pictures(tmp_path, n=1)[0].rename(path)
    (study,), strays = discover_studies(path)
    assert (study.name, study.kind, study.files, strays) == ("one", "picture", [path], [])


def test_no_readable_study_names_the_folder_and_a_skipped_file(tmp_path):
    folder = tmp_path / "empty_study"
    folder.mkdir()
    with pytest.raises(NoStudyError, match=r"no readable study in '.*empty_study'"):
        discover_studies(folder)
    (folder / "junk.bin").write_bytes(np.arange(300, dtype=np.uint8).tobytes())
    with pytest.raises(NoStudyError, match=r"1 file\(s\) skipped, e.g. '.*junk.bin': not a DICOM file"):
        discover_studies(folder)
    with pytest.raises(NoStudyError, match="does not exist"):
        discover_studies(tmp_path / "missing")
