"""The DDAD bundle through MONAI's own machinery: ConfigWorkflow (train, evaluate, infer), property checks,
verify_metadata (offline schema), verify_net_in_out, ckpt_export with TorchScript parity, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import bundle_workflow, check_evaluation_report, export_torchscript, offline_schema, train_bundle
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from medad_monai.networks.ddad import DDAD
from medad_monai.transforms import ImageReadError

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "ddad"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFER, META = (
    str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json", "metadata.json")
)
TINY = {"epochs": 1, "asr_epochs": 1, "num_members": 2}


_workflow = partial(bundle_workflow, meta_file=META)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A bundle root with a model trained for one epoch per stage on the demo data."""
    root = tmp_path_factory.mktemp("ddad_bundle")
    train_bundle(TRAIN, META, root, **TINY)
    return root


def test_bundle_root_is_the_bundle_folder_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wf = _workflow(TRAIN)
    assert Path(wf.parser.get_parsed_content("bundle_root")) == BUNDLE.resolve()
    assert Path(wf.parser.get_parsed_content("ckpt_dir")) == BUNDLE.resolve() / "models"


def test_a_copied_bundle_run_from_the_repository_root_writes_into_the_copy(tmp_path, monkeypatch):
    """``python -m monai.bundle run --config_file copy/configs/train.json`` from the repository: the copy's root."""
    copy = tmp_path / "my ddad"
    shutil.copytree(CONFIGS, copy / "configs")
    monai_main = str(Path(monai.bundle.__file__).with_name("__main__.py"))
    monkeypatch.chdir(REPO)
    for argv in (
        [monai_main, "run", "training", "--config_file", str(copy / "configs" / "train.json")],
        [monai_main, "run", f"--config_file={copy / 'configs' / 'train.json'},{copy / 'configs' / 'evaluate.json'}"],
        [monai_main, "run", "--config_file", str([str(copy / "configs" / "train.json")])],
    ):
        monkeypatch.setattr(sys, "argv", argv)
        wf = _workflow(str(copy / "configs" / "train.json"))
        assert Path(wf.parser.get_parsed_content("ckpt_dir")) == copy.resolve() / "models", argv
    # another program's --config_file is not MONAI's: the repository's bundle, found from the package
    monkeypatch.setattr(sys, "argv", ["other.py", "--config_file", str(copy / "configs" / "train.json")])
    assert Path(_workflow(TRAIN).parser.get_parsed_content("bundle_root")) == BUNDLE.resolve()
    # the model-zoo override, and the environment variable, win over the command line
    monkeypatch.setattr(sys, "argv", [monai_main, "run", "--config_file", str(copy / "configs" / "train.json")])
    monkeypatch.setenv("MEDAD_BUNDLE_ROOT", str(tmp_path / "elsewhere"))
    assert Path(_workflow(TRAIN).parser.get_parsed_content("bundle_root")) == (tmp_path / "elsewhere").resolve()
    wf = _workflow(TRAIN, bundle_root=str(tmp_path / "given"))
    assert Path(wf.parser.get_parsed_content("ckpt_dir")) == tmp_path / "given" / "models"


def test_train_writes_a_flat_state_dict_with_calibrated_threshold(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert bool(state["has_udm"])  # the demo data has an unlabeled pool -> R_dual
    assert torch.isfinite(state["threshold"])
    assert 0.05 < float(state["body_fraction"]) < 1  # the calibration normals' body extent, for volumes
    model = DDAD(num_members=2)
    model.load_state_dict(state)


def test_run_id_run_is_training(tmp_path):
    wf = _workflow(TRAIN, bundle_root=str(tmp_path))
    assert wf.parser["run"] == wf.parser.get("training") or wf.parser.get("training") == "%run"


def test_evaluate_reports_every_score(trained):
    wf = _workflow([TRAIN, EVALUATE], run_id="evaluating", bundle_root=str(trained), **TINY)
    wf.run()
    record = json.loads((trained / "eval" / "metrics.json").read_text())
    assert set(record["results"]) == {"rec", "intra", "inter", "r_intra", "r_dual"}
    for row in record["results"].values():
        assert 0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["ap"] <= 1.0
        assert row["auroc_ci95"][0] <= row["auroc"] <= row["auroc_ci95"][1]
    decided = [name for name, row in record["results"].items() if "sensitivity" in row]
    assert len(decided) == 1  # only the served map's score is thresholded
    assert record["decided_score"] == decided[0]
    # the validation normals the threshold came from travel in the model; at the calibration quantile (0.95) the
    # target-specificity threshold is the stored one, and its test figures are the decided score's
    assert record["calibration"]["n"] >= 2 and record["calibration"]["quantile"] == 0.95
    point = next(p for p in record["operating_points"] if p["target_specificity"] == 0.95)
    assert point["threshold"] == pytest.approx(record["threshold"], rel=1e-5)
    assert point["sensitivity"] == pytest.approx(record["results"][decided[0]]["sensitivity"])
    assert {c["b"] for c in record["comparisons"]} == set(record["results"]) - {decided[0]}
    # the served map against the demo lesion masks, from the same pass as the scores
    assert set(record["pixel"]) == {"auroc", "ap", "best_dice", "best_dice_threshold", "aupro"}
    assert 0.0 <= record["pixel"]["aupro"] <= 1.0 and record["pixel_auroc"] == record["pixel"]["auroc"]
    assert record["provenance"]["seed"] == 0 and record["provenance"]["versions"]["monai"]
    assert record["data"] == {"n_images": 64, "n_normal": 32, "n_anomalous": 32}
    for name in ("roc.png", "score_histograms.png", "results.md", "image_scores.csv", "metrics.csv"):
        assert (trained / "eval" / name).stat().st_size > 0
    assert "DDAD-R_dual" in (trained / "eval" / "results.md").read_text()


def test_inference_writes_maps_and_scores_for_png_dicom_nifti(trained, mixed_folder):
    out = trained / "infer_out"
    wf = _workflow(
        INFER,
        workflow_type="infer",
        bundle_root=str(trained),
        dataset_dir=str(mixed_folder),
        output_dir=str(out),
        num_members=2,
    )
    assert wf.check_properties() == []
    wf.run()
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 5
    for row in rows:
        assert 0.0 <= float(row["score"]) <= 1.0 and row["decision"] in ("0", "1")
        src = Path(row["filename"])
        heat = nib.load(row["pred_file"]).get_fdata()
        assert heat.dtype == np.float64 and np.isfinite(heat).all()
        if src.suffix == ".png":  # the map is inverted back to the input's geometry (MONAI reads PNG as W x H)
            w, h = Image.open(src).size
            assert heat.shape == (w, h)
    assert {Path(r["filename"]).name for r in rows} == {p.name for p in mixed_folder.iterdir()}


def test_metadata_is_valid_against_the_schema_offline(tmp_path):
    schema = offline_schema(tmp_path)
    verify_metadata(meta_file=META, filepath=str(schema))  # raises on an invalid file; never downloads
    meta = json.loads(Path(META).read_text())
    assert meta["schema"].endswith("meta_schema_20240725.json")
    assert {"medad-monai", "pytorch-ignite"} <= set(meta["required_packages_version"])
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "anomaly"}


def test_metadata_schema_check_catches_a_missing_key(tmp_path):
    schema = offline_schema(tmp_path)
    meta = json.loads(Path(META).read_text())
    del meta["network_data_format"]["inputs"]["image"]["value_range"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(Exception, match="value_range"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=INFER, device="cpu")


def test_ckpt_export_torchscript_equals_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    scripted = export_torchscript(trained, META, INFER, ts, num_members=2)
    eager = DDAD(num_members=2)
    eager.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True))
    eager.eval()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert (scripted(x) - eager(x)).abs().max().item() <= 1e-5
    assert float(scripted.threshold) == pytest.approx(float(eager.threshold))  # the threshold travels along


def test_corrupt_training_image_is_named(tmp_path):
    data = tmp_path / "data"
    good = data / "train" / "good"
    good.mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((64, 64), 10 * i, np.uint8)).save(good / f"n{i}.png")
    (good / "n9_broken.png").write_bytes(b"\x89PNG truncated")
    wf = _workflow(TRAIN, bundle_root=str(tmp_path), dataset_dir=str(data), **TINY)
    with pytest.raises(Exception) as info:
        wf.run()
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(c, ImageReadError) and "n9_broken.png" in str(c) for c in chain)
    assert not (tmp_path / "models" / "model.pt").exists()


def test_no_unlabeled_pool_trains_r_intra(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(12):
        (data / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(data / "train" / "good" / f"n{i}.png")
    wf = _workflow(TRAIN, bundle_root=str(tmp_path), dataset_dir=str(data), batch_size=4, asr_batch_size=4, **TINY)
    wf.run()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not bool(state["has_udm"])
    # output_map "auto" has no pool to judge the scores on: the fixed fallback, the paper's R_intra, is recorded
    report = json.loads((tmp_path / "models" / "training_report.json").read_text())
    assert report["selection"]["chosen"] == "refined" and report["selection"]["criterion"].startswith("fallback")
    assert report["served_map"] == "refined"


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from medad_monai.io import atomic_torch_save

    path = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_html_report_of_the_evaluation_loads_in_a_browser(trained, tmp_path):
    """Evaluate into a fresh folder with the bundle's ErrorGallery (it reads the served map DDAD's evaluation outputs
    beside the scores), write the HTML report and open it in headless chromium."""
    out = tmp_path / "eval"
    _workflow([TRAIN, EVALUATE], run_id="evaluating", bundle_root=str(trained), output_dir=str(out), **TINY).run()
    seen = check_evaluation_report(out, tmp_path / "report.html")
    # the score the model serves decides: output_map "auto" chose it at training time, label-free, and recorded it
    served = json.loads((trained / "models" / "training_report.json").read_text())["served_map"]
    assert seen["decided"] == served and seen["gallery"] == 12
