"""Helpers of the MONAI Deploy tests: tiny bundles with untrained weights and a stored threshold (the repository's
configs with the small-network settings written into ``inference.json``, so the application and the bundle's own
inference read the same config), input folders, running the bundle's ``inference.json`` and the application."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"
APP_DIR = REPO / "apps" / "deploy"

# small networks (fast on 2 CPU cores); the rest of each config is the bundle's own
DDAD_TINY = {"num_members": 2, "network_def#multiplier": 0.25}
PDD_TINY = {"image_size": 64, "decoder_blocks": [1, 1, 1], "wrn_weights": "random", "vmamba_weights": "random"}


def _copy_configs(name: str, root: Path, overrides: dict[str, Any]) -> ConfigParser:
    shutil.copytree(BUNDLES / name / "configs", root / "configs")
    (root / "models").mkdir(parents=True)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update(overrides)
    (root / "configs" / "inference.json").write_text(json.dumps(parser.config, indent=2))
    parser["bundle_root"] = str(root)
    return parser


def make_bundle(name: str, root: Path, threshold: float | None = 0.502, support_dir: Path | None = None) -> Path:
    """A bundle folder ``root`` of ``name`` (ddad, d24fad, pdd) with untrained weights in ``models/model.pt``.

    ``threshold`` is stored in the network's buffer (DDAD, PDD); D²4FAD's threshold is calibrated by its own
    support-set handler at load time from ``support_dir``.
    """
    overrides: dict[str, Any] = {"ddad": DDAD_TINY, "pdd": PDD_TINY, "d24fad": {"num_support": 2}}[name]
    if name == "d24fad":
        if support_dir is None:
            raise ValueError("D24FAD needs a support folder")
        overrides = {**overrides, "support_dir": str(support_dir)}
    parser = _copy_configs(name, root, overrides)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    if hasattr(net, "has_udm"):
        net.has_udm.fill_(True)
    if threshold is not None and hasattr(net, "threshold"):
        net.threshold.fill_(threshold)
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def write_pictures(folder: Path, n: int = 2, seed: int = 0) -> list[Path]:
    """``n`` gray PNGs of different sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"pic{i}.png"
        Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 56), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def write_volume(path: Path, shape: tuple[int, int, int] = (40, 48, 4)) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume with a bright blob and a non-trivial affine; returns (data, affine)."""
    rng = np.random.default_rng(1)
    vol = rng.random(shape).astype(np.float32)
    vol[10:20, 12:24, 1:3] += 3.0
    affine = np.array([[0.8, 0, 0, -10.0], [0, 0.9, 0, 5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, affine), str(path))
    return vol, affine


def read_map(out: Path, stem: str) -> nib.Nifti1Image:
    return nib.load(str(out / f"{stem}_anomaly_map.nii.gz"))


def read_json(out: Path, stem: str) -> dict[str, Any]:
    return json.loads((out / f"{stem}_anomaly.json").read_text())


def assert_parity(out: Path, theirs: dict[str, dict[str, Any]], atol: float = 1e-5) -> None:
    """The application's maps, scores and decisions equal the bundle's inference for every file it scored."""
    assert theirs, "the bundle's inference scored nothing"
    for stem, ref in theirs.items():
        ours = read_map(out, stem).get_fdata().astype(np.float32)
        assert ours.shape == ref["map"].shape, stem
        assert np.abs(ours - ref["map"]).max() <= atol, (stem, float(np.abs(ours - ref["map"]).max()))
        summary = read_json(out, stem)
        assert abs(summary["score"] - ref["score"]) <= atol, (stem, summary["score"], ref["score"])
        assert summary["decision"] == ref["decision"], stem
