"""End to end: a brief DDAD training on the demo head CT separates anomalous from normal test images, and, served on
the 3D demo volumes, puts a subject's lesion volume above the same subject without the lesion, with the ``anomaly``
label on the lesion; a volume threshold calibrated on other subjects' normal volumes flags fewer normal volumes than
the 2D threshold and still labels the lesions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_testing import calibrate_on_demo_normals, serve_demo_subjects, train_bundle_copy

from medad_monai.inference import load_bundle_model

pytestmark = pytest.mark.slow

DOMAIN = "head_ct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The bundle trained (default 60 AE epochs, 2 members per ensemble, one ASR epoch) and evaluated on head CT."""
    runs = ((("train.json",), "training"), (("train.json", "evaluate.json"), "evaluating"))
    override = {"dataset_dir": f"demo:{DOMAIN}", "epochs": 60, "asr_epochs": 1, "num_members": 2, "seed": 0}
    return train_bundle_copy("ddad", tmp_path_factory.mktemp("ddad_learns"), runs, **override)


def test_brief_training_ranks_anomalies_above_normals(trained):
    record = json.loads((trained / "eval" / "metrics.json").read_text())
    results = record["results"]
    # chance is 0.5; the reconstruction error A_rec measured 0.89 on the demo head CT at seed 0 (the benchmark's
    # 3-member bundle). A_inter with 2 members is not stable enough to assert here.
    assert results["rec"]["auroc"] > 0.75, results
    assert record["served_map"] in results or record["served_map"] == "refined", record["served_map"]


def test_lesion_volumes_score_above_their_normal_twins_and_are_labelled(trained):
    """Eight subjects of the 3D demo head CT, each with and without a lesion over 5 slices (measured at seed 0: lesion
    first 8 of 8, top slice in the lesion 8 of 8, most of the lesion labelled 7-8 of 8, and 3 of the 8 normal volumes
    flagged by the 2D threshold). A volume threshold from 8 other subjects' normal volumes (their 0.95 quantile)
    flags none of the 8 normal volumes and 2 of the 8 lesion volumes: the lesion lifts its own subject's score, but
    normal subjects differ by as much (docs/comparison.md, "Volumes")."""
    model = load_bundle_model(trained, device="cpu", overrides={"num_members": 2})
    seen = serve_demo_subjects(model, DOMAIN)
    assert seen.threshold_sources == {"image"}  # no volume threshold yet
    assert seen.first == 8 and seen.on_lesion == 8, seen
    assert seen.labelled >= 6, seen
    calibration = calibrate_on_demo_normals(model, DOMAIN)
    assert calibration.threshold > model.threshold  # a volume's maximum over slices exceeds one image's quantile
    normals, lesions = seen.over(calibration.threshold)
    assert normals <= min(1, seen.normals_flagged) and lesions >= 1, (seen, calibration)
