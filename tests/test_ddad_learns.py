"""End to end: a brief DDAD training on the demo head CT separates anomalous from normal test images, and, served on
the 3D demo volumes, puts a subject's lesion volume above the same subject without the lesion, with the ``anomaly``
label on the lesion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from medad_monai.data.demo_volumes import demo_volume
from medad_monai.inference import load_bundle_model
from medad_monai.inference.volume import score_volume

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ddad" / "configs"
DOMAIN = "head_ct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The bundle trained (default 60 AE epochs, 2 members per ensemble, one ASR epoch) and evaluated on head CT."""
    root = tmp_path_factory.mktemp("ddad_learns")
    shutil.copytree(CONFIGS, root / "configs")  # a bundle folder, as served: its configs beside its model
    override = {
        "bundle_root": str(root), "dataset_dir": f"demo:{DOMAIN}", "epochs": 60, "asr_epochs": 1, "num_members": 2,
        "seed": 0,
    }  # fmt: skip
    for files, run_id in (
        ([root / "configs" / "train.json"], "training"),
        ([root / "configs" / "train.json", root / "configs" / "evaluate.json"], "evaluating"),
    ):
        wf = ConfigWorkflow(
            config_file=[str(f) for f in files],
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            run_id=run_id,
            **override,
        )
        wf.initialize()
        wf.run()
    return root


def test_brief_training_ranks_anomalies_above_normals(trained):
    record = json.loads((trained / "eval" / "metrics.json").read_text())
    results = record["results"]
    # chance is 0.5; the reconstruction error A_rec measured 0.89 on the demo head CT at seed 0 (the benchmark's
    # 3-member bundle). A_inter with 2 members is not stable enough to assert here.
    assert results["rec"]["auroc"] > 0.75, results
    assert record["served_map"] in results or record["served_map"] == "refined", record["served_map"]


def test_lesion_volumes_score_above_their_normal_twins_and_are_labelled(trained):
    """Eight subjects of the 3D demo head CT, each with and without a lesion over 5 slices (measured at seed 0: lesion
    first 8 of 8, top slice in the lesion 8 of 8, most of the lesion labelled 7 of 8)."""
    model = load_bundle_model(trained, device="cpu", overrides={"num_members": 2})
    first, on_lesion, labelled = 0, 0, 0
    for subject in range(8):
        normal, lesion = demo_volume(DOMAIN, False, subject), demo_volume(DOMAIN, True, subject)
        rn = score_volume(model, normal.image, affine=normal.affine)
        rl = score_volume(model, lesion.image, affine=lesion.affine)
        truth, label = lesion.mask.astype(bool), rl.mask.astype(bool)
        first += rl.score > rn.score
        on_lesion += rl.top_slice in lesion.lesion_slices
        labelled += bool(rl.is_anomalous) and (truth & label).sum() > 0.5 * truth.sum()
    assert first == 8 and on_lesion == 8, (first, on_lesion)
    assert labelled >= 6, labelled
