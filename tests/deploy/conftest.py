"""Fixtures of the MONAI Deploy tests: a tiny DDAD bundle, a mixed input folder (demo PNGs, the real pydicom
CT_small.dcm and MR_small.dcm, a NIfTI volume). Nothing here needs the SDK."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from deploy_testing import make_bundle, write_volume  # SDK-free: the test modules skip without the SDK


@pytest.fixture(scope="session")
def ddad_bundle(tmp_path_factory) -> Path:
    return make_bundle("ddad", tmp_path_factory.mktemp("deploy_ddad") / "ddad")


@pytest.fixture(scope="session")
def mixed_inputs(tmp_path_factory) -> Path:
    """Two demo brain MR PNGs (one normal, one with a lesion), CT_small.dcm, MR_small.dcm and a 3D NIfTI."""
    from pydicom.data import get_testdata_file

    from medad_monai.data.demo import resolve_dataset_dir

    folder = tmp_path_factory.mktemp("deploy_inputs") / "inputs"
    folder.mkdir()
    demo = resolve_dataset_dir("demo:brain_mr/test")
    shutil.copy(sorted((demo / "good").glob("*.png"))[0], folder / "demo_good.png")
    shutil.copy(sorted((demo / "bad").glob("*.png"))[0], folder / "demo_bad.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    write_volume(folder / "volumes" / "vol.nii.gz")
    return folder
