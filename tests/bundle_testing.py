"""Helpers shared by the bundle tests: MONAI ConfigWorkflow set-up, the offline metadata schema, mixed inputs."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
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


def check_evaluation_report(eval_dir: Path, out: Path, k: int = 6) -> dict[str, Any]:
    """Check a bundle evaluation's error gallery against its image scores, then write its HTML report to ``out``
    and open it in headless chromium (tests/browser.py; skipped without a browser). Returns what it saw.

    The gallery keeps the ``k`` highest-scored normals and ``k`` lowest-scored anomalous images by the score the
    model decides on, which ``image_scores.csv`` records independently (the score writer), so the two must agree.
    """
    import json

    import pytest
    from browser import check_page

    from medad_monai.html_report import decided_score, read_image_scores, write_html_report

    metrics = json.loads((eval_dir / "metrics.json").read_text())
    table = read_image_scores(eval_dir / "image_scores.csv", metrics["results"])
    decided = decided_score(metrics, table.scores)
    assert decided is not None, metrics.keys()
    gallery = json.loads((eval_dir / "gallery" / "gallery.json").read_text())
    scores, files = table.scores[decided], np.asarray(table.files)
    by_file = dict(zip(table.files, scores))
    for label, kinds, sign in (
        (0, {"false_positive", "hardest_normal"}, -1),
        (1, {"false_negative", "hardest_anomalous"}, 1),
    ):
        members = table.labels == label
        expected = files[members][np.argsort(sign * scores[members], kind="stable")][:k]
        assert {r["file"] for r in gallery if r["kind"] in kinds} == set(expected), (label, gallery)
    for r in gallery:
        assert r["score"] == pytest.approx(by_file[r["file"]], rel=1e-4, abs=1e-6)
        assert r["threshold"] == pytest.approx(metrics["threshold"])
        assert (r["kind"] in ("false_positive", "hardest_anomalous")) == (r["score"] > r["threshold"])
        assert (eval_dir / "gallery" / r["png"]).stat().st_size > 0
    page = write_html_report(eval_dir, out, resamples=200)
    assert page == out and 'id="gallery"' in out.read_text()
    check = check_page(out, screenshot=out.with_suffix(".png"))
    assert check.problems(min_images=2 + len(gallery)) == []  # at least the curves and histograms, and the gallery
    return {"images": len(check.images), "gallery": len(gallery), "decided": decided}


def train_bundle_copy(bundle: str, root: Path, runs: tuple[tuple[tuple[str, ...], str], ...], **override) -> Path:
    """Copy ``bundles/<bundle>/configs`` into ``root`` (a bundle folder, as served: its configs beside its model)
    and run each ``(config files, run id)`` of ``runs`` there in turn; returns ``root``."""
    shutil.copytree(Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs", root / "configs")
    for files, run_id in runs:
        wf = bundle_workflow(
            [str(root / "configs" / f) for f in files],
            str(root / "configs" / "metadata.json"),
            run_id=run_id,
            bundle_root=str(root),
            **override,
        )
        wf.run()
    return root


@dataclass
class VolumeServing:
    """What serving the 3D demo subjects with and without their lesion gives (counts over the subjects).

    Attributes:
        first: lesion volume scored above the same subject's normal volume.
        on_lesion: the lesion volume's top slice is a lesion slice.
        labelled: the lesion volume is decided anomalous and most of its lesion carries the ``anomaly`` label.
        normals_flagged: normal volumes decided anomalous (with the threshold the volumes were served with).
        threshold_sources: the ``threshold_source`` of every served volume.
        normal_scores, lesion_scores: the volume scores, per subject.
    """

    first: int = 0
    on_lesion: int = 0
    labelled: int = 0
    normals_flagged: int = 0
    threshold_sources: set[str] = field(default_factory=set)
    normal_scores: list[float] = field(default_factory=list)
    lesion_scores: list[float] = field(default_factory=list)

    def over(self, threshold: float) -> tuple[int, int]:
        """How many normal and how many lesion volumes score above ``threshold``."""
        return sum(s > threshold for s in self.normal_scores), sum(s > threshold for s in self.lesion_scores)


def serve_demo_subjects(model, domain: str, subjects: range | list[int] = range(8)) -> VolumeServing:
    """Serve each subject's normal and lesion demo volume with ``score_volume`` and count what a reader would see."""
    from medad_monai.data.demo_volumes import demo_volume
    from medad_monai.inference.volume import score_volume

    seen = VolumeServing()
    for subject in subjects:
        normal, lesion = demo_volume(domain, False, subject), demo_volume(domain, True, subject)
        rn = score_volume(model, normal.image, affine=normal.affine)
        rl = score_volume(model, lesion.image, affine=lesion.affine)
        truth, label = lesion.mask.astype(bool), rl.mask.astype(bool)
        seen.first += rl.score > rn.score
        seen.on_lesion += rl.top_slice in lesion.lesion_slices
        seen.labelled += bool(rl.is_anomalous) and (truth & label).sum() > 0.5 * truth.sum()
        seen.normals_flagged += bool(rn.is_anomalous)
        seen.threshold_sources |= {rn.threshold_source, rl.threshold_source}
        seen.normal_scores.append(rn.score)
        seen.lesion_scores.append(rl.score)
    return seen


def calibrate_on_demo_normals(model, domain: str, subjects: range | list[int] = range(100, 108)):
    """Calibrate ``model``'s volume threshold on the normal demo volumes of ``subjects`` (none of the subjects
    :func:`serve_demo_subjects` serves by default); returns the calibration."""
    from medad_monai.data.demo_volumes import demo_volume
    from medad_monai.inference.volume_calibration import calibrate_volume_threshold

    calibration, _ = calibrate_volume_threshold(model, [demo_volume(domain, False, s).image for s in subjects])
    return calibration
