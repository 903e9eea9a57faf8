"""The PDD bundle through MONAI's own machinery: ConfigWorkflow (train, evaluate, infer), property checks,
verify_metadata (offline schema), verify_net_in_out, ckpt_export (TorchScript scripting, the documented export path)
with parity, and a short training run that ranks demo anomalies above normals.

Random teachers and small students keep the whole file to about two minutes on 2 CPU cores."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import bundle_workflow, check_evaluation_report, export_torchscript, offline_schema, train_bundle
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from medad_monai.networks.pdd import PDD

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "pdd"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFER, META = (
    str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json", "metadata.json")
)
# the bundle's architecture defaults: the checkpoint records them, and an eager copy must be built the same way
_TRAIN = json.loads((CONFIGS / "train.json").read_text())
ARCH = {k: _TRAIN[k] for k in ("fusion", "plain_map", "diverse_levels")}
SIZE = 64
# the network-shape overrides every workflow of a tiny model needs (train, evaluate, infer, export)
NET = {"image_size": SIZE, "decoder_blocks": [1, 1, 1], "wrn_weights": "random", "vmamba_weights": "random"}
TINY = {**NET, "epochs": 1, "epoch_length": 4, "batch_size": 4, "seed": 0}


_workflow = partial(bundle_workflow, meta_file=META)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A bundle root with a tiny PDD trained for one epoch (4 iterations of batch 4) on the demo data, evaluated."""
    root = tmp_path_factory.mktemp("pdd_bundle")
    train_bundle(TRAIN, META, root, **TINY)
    wf = _workflow([TRAIN, EVALUATE], run_id="evaluating", bundle_root=str(root), **TINY)
    wf.run()
    return root


def test_bundle_root_is_the_bundle_folder_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = _workflow(TRAIN)
    assert Path(wf.parser.get_parsed_content("bundle_root")) == BUNDLE.resolve()
    assert Path(wf.parser.get_parsed_content("ckpt_dir")) == BUNDLE.resolve() / "models"
    assert wf.parser["training"] == wf.parser["run"]  # `run` (MONAI Label) and `training` are the same
    # the paper's optimiser: Adam lr 2e-3 with cosine annealing over the epochs
    assert wf.parser["learning_rate"] == 0.002
    assert wf.parser["train"]["lr_scheduler"]["_target_"].endswith("CosineAnnealingLR")


def test_train_writes_a_flat_state_dict_with_calibrated_threshold(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert torch.isfinite(state["threshold"])
    assert 0.05 < float(state["body_fraction"]) < 1  # the calibration normals' body extent, for volumes
    assert any(k.startswith("wrn.") for k in state) and any(k.startswith("vmamba.") for k in state)
    model = PDD(image_size=SIZE, decoder_blocks=(1, 1, 1), wrn_weights="random", vmamba_weights="random", **ARCH)
    model.load_state_dict(state)


def test_brief_training_ranks_anomalies_above_normals(trained):
    record = json.loads((trained / "eval" / "metrics.json").read_text())
    row = record["results"]["score"]
    assert {"auroc", "ap", "f1_max", "sensitivity", "specificity"} <= set(row)
    for metric in ("auroc", "ap", "f1_max", "sensitivity", "specificity"):  # stratified bootstrap 95% intervals
        low, high = row[f"{metric}_ci95"]
        assert 0.0 <= low <= row[metric] <= high <= 1.0, (metric, row)
    assert "specificity" in (trained / "eval" / "results.md").read_text()
    assert record["data"] == {"n_images": 64, "n_normal": 32, "n_anomalous": 32}
    assert record["provenance"]["seed"] == 0 and record["provenance"]["versions"]["monai"]
    for name in ("roc.png", "score_histograms.png", "results.md", "image_scores.csv", "metrics.csv"):
        assert (trained / "eval" / name).stat().st_size > 0
    # chance is 0.5 (AP: 0.5); random teachers, one epoch at 64 px (measured: AUROC 0.66, AP 0.63)
    assert row["auroc"] > 0.58, row
    assert row["ap"] > 0.55, row
    # localisation: the map's pixels against the demo lesion masks (chance 0.5; measured 0.91)
    assert 0.8 < record["pixel_auroc"] <= 1.0, record["pixel_auroc"]
    assert record["pixel"]["auroc"] == record["pixel_auroc"]
    assert 0.0 < record["pixel"]["ap"] <= 1.0 and 0.0 < record["pixel"]["best_dice"] <= 1.0
    assert 0.0 <= record["pixel"]["aupro"] <= 1.0
    assert "Pixel metrics of the map against the lesion masks" in (trained / "eval" / "results.md").read_text()


def test_inference_writes_maps_and_scores_for_png_dicom_nifti(trained, mixed_folder):
    out = trained / "infer_out"
    wf = _workflow(
        INFER,
        workflow_type="infer",
        bundle_root=str(trained),
        dataset_dir=str(mixed_folder),
        output_dir=str(out),
        **NET,
    )
    assert wf.check_properties() == []
    wf.run()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 5
    for row in rows:
        assert float(row["score"]) >= 0.0 and row["decision"] in ("0", "1")
        src = Path(row["filename"])
        heat = nib.load(row["pred_file"]).get_fdata()
        assert np.isfinite(heat).all()
        if src.suffix == ".png":  # the map is inverted back to the input's geometry (MONAI reads PNG as W x H)
            w, h = Image.open(src).size
            assert heat.shape == (w, h)
    assert {Path(r["filename"]).name for r in rows} == {p.name for p in mixed_folder.iterdir()}


def test_metadata_is_valid_against_the_schema_offline(tmp_path):
    schema = offline_schema(tmp_path)
    verify_metadata(meta_file=META, filepath=str(schema))  # raises on an invalid file; never downloads
    meta = json.loads(Path(META).read_text())
    assert {"medad-monai", "pytorch-ignite"} <= set(meta["required_packages_version"])
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "anomaly"}
    assert all(v > 0 for k, v in meta["eval_metrics"].items() if k != "note")  # measured values, not placeholders
    infer = json.loads(Path(INFER).read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [infer["image_size"]] * 2


def test_verify_net_in_out():
    # the shipped inference network (full decoders, 128 px from the metadata); random teachers, no checkpoint
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, device="cpu")


def test_ckpt_export_torchscript_equals_eager(trained, tmp_path):
    """The documented export path: ``ckpt_export`` with the default ``torch.jit.script`` (no tracing needed)."""
    ts = tmp_path / "model.ts"
    scripted = export_torchscript(trained, META, INFER, ts, **NET)
    eager = PDD(image_size=SIZE, decoder_blocks=(1, 1, 1), wrn_weights="random", vmamba_weights="random", **ARCH)
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (scripted(x) - eager(x)).abs().max().item() <= 1e-5
    assert float(scripted.threshold) == pytest.approx(float(eager.threshold))  # the threshold travels along


def test_html_report_of_the_evaluation_loads_in_a_browser(trained, tmp_path):
    """The fixture's evaluation ran the bundle's ErrorGallery; its HTML report loads cleanly in headless chromium."""
    seen = check_evaluation_report(trained / "eval", tmp_path / "report.html")
    assert seen["decided"] == "score" and seen["gallery"] == 12  # 6 normals, 6 anomalous of 32 each
