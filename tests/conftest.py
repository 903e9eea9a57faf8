"""Shared test set-up: demo data in a per-session folder, quiet logs, fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

# Demo data is generated once per machine (CI sets MEDAD_MONAI_DATA); tests never write into the user's cache.
os.environ.setdefault("MEDAD_MONAI_DATA", str(REPO / ".pytest-demo-data"))
# Under pytest-xdist (the README's `-n 2`) each worker gets its share of the cores, so that two workers do not
# oversubscribe a 2-core machine; a plain run uses up to 2 threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """A user's inference folder: PNG (gray, RGB, 16-bit), a real DICOM and a 2D NIfTI."""
    from bundle_testing import write_mixed_inputs

    return write_mixed_inputs(tmp_path / "inputs")
