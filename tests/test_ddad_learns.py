"""End to end: a brief DDAD training on the demo data separates anomalous from normal test images."""

from __future__ import annotations

import json
from pathlib import Path

from monai.bundle import ConfigWorkflow

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ddad" / "configs"


def test_brief_training_ranks_anomalies_above_normals(tmp_path):
    # The default 60 AE epochs with 2 members per ensemble; ASR-Net gets one epoch only (its score is not asserted).
    override = {"bundle_root": str(tmp_path), "epochs": 60, "asr_epochs": 1, "num_members": 2, "seed": 0}
    for files, run_id in (
        ([CONFIGS / "train.json"], "training"),
        ([CONFIGS / "train.json", CONFIGS / "evaluate.json"], "evaluating"),
    ):
        wf = ConfigWorkflow(
            config_file=[str(f) for f in files],
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            run_id=run_id,
            **override,
        )
        wf.initialize()
        wf.run()
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    results = record["results"]
    # chance is 0.5; the reconstruction error A_rec measured 0.82 at seed 0 on the demo brain MR (0.62 after 30
    # epochs: the AEs need the default budget). A_inter with 2 members is not stable enough to assert here.
    assert results["rec"]["auroc"] > 0.72, results
    assert record["served_map"] in results or record["served_map"] == "refined", record["served_map"]
