"""End to end: PDD trained briefly on the demo head CT (the bundle's defaults: random teachers, 64 px, 5 epochs), served
on the 3D demo volumes, puts each subject's lesion volume above the same subject without the lesion, its top slice
in the lesion, and the ``anomaly`` label on the lesion in some subjects."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from medad_monai.data.demo_volumes import demo_volume
from medad_monai.inference import load_bundle_model
from medad_monai.inference.volume import score_volume

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "pdd" / "configs"
DOMAIN = "head_ct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The bundle trained on head CT for 5 epochs (its default is 10; 3 put the lesion first in only 5 of 8)."""
    root = tmp_path_factory.mktemp("pdd_learns")
    shutil.copytree(CONFIGS, root / "configs")  # a bundle folder, as served: its configs beside its model
    wf = ConfigWorkflow(
        config_file=str(root / "configs" / "train.json"),
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        run_id="training",
        bundle_root=str(root),
        dataset_dir=f"demo:{DOMAIN}",
        epochs=5,
        seed=0,
    )
    wf.initialize()
    wf.run()
    return root


def test_lesion_volumes_score_above_their_normal_twins_and_are_labelled(trained):
    """Eight subjects of the 3D demo head CT, each with and without a lesion over 5 slices. Measured at seed 0 (2
    threads): lesion first 8 of 8, top slice in the lesion 8 of 8, most of the lesion labelled 4 of 8 (the others:
    the lesion volume stays under the 2D threshold, or the label misses it). The same model flags 3 of the 8 normal
    volumes: the threshold is calibrated on 2D normals (docs/comparison.md)."""
    model = load_bundle_model(trained, device="cpu")
    first, on_lesion, labelled = 0, 0, 0
    for subject in range(8):
        normal, lesion = demo_volume(DOMAIN, False, subject), demo_volume(DOMAIN, True, subject)
        rn = score_volume(model, normal.image, affine=normal.affine)
        rl = score_volume(model, lesion.image, affine=lesion.affine)
        truth, label = lesion.mask.astype(bool), rl.mask.astype(bool)
        first += rl.score > rn.score
        on_lesion += rl.top_slice in lesion.lesion_slices
        labelled += bool(rl.is_anomalous) and (truth & label).sum() > 0.5 * truth.sum()
    assert first >= 7 and on_lesion >= 7, (first, on_lesion)
    assert labelled >= 3, labelled
