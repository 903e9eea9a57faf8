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


# The heaviest files (minutes of training each; per-file totals of a CI run, largest first) are collected first. With
# the README's `-n 2 --dist loadfile --no-loadscope-reorder`, xdist hands files to its workers in collection order, so
# the run ends on short files that both workers share; xdist's default order (files with the most tests first) put
# the heavy one-test files last, on one worker, while the other core idled.
HEAVY_FIRST = (
    "test_reliability.py",
    "test_distributed.py",
    "test_comparison.py",
    "test_pdd_learns.py",
    "test_ddad_learns.py",
    "test_tracking.py",
    "test_folder_inference.py",
    "test_ddad_bundle.py",
    "test_pdd_bundle.py",
    "test_d24fad_bundle.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """A user's inference folder: PNG (gray, RGB, 16-bit), a real DICOM and a 2D NIfTI."""
    from bundle_testing import write_mixed_inputs

    return write_mixed_inputs(tmp_path / "inputs")
