"""Helpers shared by the bundle tests: MONAI ConfigWorkflow set-up, the offline metadata schema, mixed inputs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.bundle import ConfigWorkflow
from PIL import Image

from medad_monai.io import file_stem

SCHEMA = Path(__file__).resolve().parent / "fixtures" / "meta_schema_20240725.json"


def bundle_workflow(
    config_file, meta_file: str, workflow_type: str = "train", run_id: str = "run", **override
) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` as ``python -m monai.bundle run`` builds it (no logging config)."""
    wf = ConfigWorkflow(
        config_file=config_file,
        meta_file=meta_file,
        logging_file=False,
        workflow_type=workflow_type,
        run_id=run_id,
        **override,
    )
    wf.initialize()
    return wf


def train_bundle(train_config: str, meta_file: str, bundle_root: Path, **override) -> Path:
    """Run a bundle's ``training`` id into ``bundle_root`` after checking its train properties; returns the root."""
    wf = bundle_workflow(train_config, meta_file, run_id="training", bundle_root=str(bundle_root), **override)
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return bundle_root


def export_torchscript(root: Path, meta_file: str, config_file: str, dest: Path, **override):
    """``monai.bundle ckpt_export`` of ``root/models/model.pt`` (the documented export path, scripting) into
    ``dest``; returns the loaded TorchScript module."""
    import torch
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="network_def",
        filepath=str(dest),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=meta_file,
        config_file=config_file,
        **override,
    )
    return torch.jit.load(str(dest))


def offline_schema(folder: Path) -> Path:
    """A copy of the offline stand-in for MONAI's metadata schema, where ``verify_metadata`` expects to find
    an already-downloaded file (so it never downloads)."""
    path = folder / "schema.json"
    shutil.copy(SCHEMA, path)
    return path


def write_mixed_inputs(folder: Path) -> Path:
    """PNG (8-bit gray, RGB, 16-bit), a real DICOM and a 2D NIfTI, as a user's inference folder."""
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 90), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)).save(folder / "color.png")
    Image.fromarray(rng.integers(0, 65535, (64, 80)).astype(np.uint16)).save(folder / "deep.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    nib.save(nib.Nifti1Image(rng.random((50, 60)).astype(np.float32), np.eye(4)), str(folder / "slice.nii.gz"))
    return folder


def run_inference(bundle: Path, inputs: Path, out: Path, **override) -> None:
    """Run the bundle's own ``inference.json`` (MONAI ``ConfigWorkflow``, as ``python -m monai.bundle run``) on a
    folder on the CPU, writing to ``out``."""
    wf = bundle_workflow(
        str(bundle / "configs" / "inference.json"),
        str(bundle / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(bundle),
        dataset_dir=str(inputs),
        output_dir=str(out),
        device="$torch.device('cpu')",
        **override,
    )
    wf.run()
    wf.finalize()


def bundle_inference(bundle: Path, inputs: Path, out: Path, **override) -> dict[str, dict[str, Any]]:
    """:func:`run_inference`, then ``{file stem: {"filename", "map", "score", "decision", "threshold"}}``."""
    run_inference(bundle, inputs, out, **override)
    rows = list(csv.DictReader((out / "scores.csv").open()))
    return {
        file_stem(Path(r["filename"]).name): {
            "filename": r["filename"],
            "map": nib.load(r["pred_file"]).get_fdata().astype(np.float32),
            "score": float(r["score"]),
            "decision": int(r["decision"]),
            "threshold": float(r["threshold"]) if r.get("threshold") not in (None, "", "nan") else float("nan"),
        }
        for r in rows
    }
