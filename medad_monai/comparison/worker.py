"""Fit and test one method of a comparison in this process; the runner starts one process per method so that each
one's peak memory is its own (``ru_maxrss`` of the process, CUDA peak allocation on a GPU).

``python -m medad_monai.comparison SPEC_JSON METHOD RESULT_JSON`` writes, atomically, the method's test
scores, its calibrated threshold, its pixel AUROC (maps against the lesion masks, when the test split has them),
and what it cost: fit seconds (training plus threshold calibration), per-image
inference latency (batch of one, after warm-up) and peak memory.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose
from torch.utils.data import DataLoader, TensorDataset

from medad_monai.benchmarking import time_calls
from medad_monai.comparison.baselines import BASELINES, build_baseline, fit_patchcore, fit_reverse_distillation
from medad_monai.comparison.data import (
    ComparisonData,
    baseline_preprocessing,
    bundle_parser,
    comparison_data,
    load_batch,
    load_masks,
)
from medad_monai.inference.bundle_model import load_bundle_model
from medad_monai.io import atomic_write_json
from medad_monai.metrics.operating_points import quantile_threshold
from medad_monai.metrics.ranking import roc_auc
from medad_monai.provenance import seed_everything

__all__ = ["BUNDLE", "run_method"]

logger = logging.getLogger("medad_monai")

BUNDLE = "bundle"
# preprocessed images (B, C, S, S) -> (anomaly maps (B, 1, S, S), image scores (B,)), both on the CPU
Scorer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _score_all(score: Scorer, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, np.ndarray]:
    maps, scores = zip(*(score(images[i : i + batch_size]) for i in range(0, len(images), batch_size)))
    return torch.cat(maps), torch.cat(scores).numpy()


def _run_workflow(
    root: Path, config_names: list[str], run_id: str, overrides: dict[str, Any], device: torch.device
) -> None:
    """Run ``run_id`` of the bundle copy at ``root`` (its ``configs/<config_names>``) as ``monai.bundle run`` does."""
    configs = root / "configs"
    wf = ConfigWorkflow(
        config_file=[str(configs / name) for name in config_names],
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        run_id=run_id,
        **{**overrides, "bundle_root": str(root), "device": f"$torch.device('{device}')"},
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def _fit_bundle(spec: dict[str, Any], out: Path, device: torch.device) -> tuple[Scorer, float, str, Compose]:
    """Train the bundle's own ``train.json`` in a copy of the bundle under ``out``; serve it as MONAI Label and
    MONAI Deploy do (:func:`~medad_monai.inference.bundle_model.load_bundle_model`)."""
    root = out / "bundle"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(spec["configs"], root / "configs")
    _run_workflow(root, ["train.json"], "training", spec["overrides"], device)
    served = load_bundle_model(root, device, overrides=spec["overrides"])

    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = served.predict(images)
        return maps, served.score(maps)

    description = f"{served.name} {served.version} (model {served.model_version})"
    return score, served.threshold, description, served.preprocessing


def _evaluate_bundle(spec: dict[str, Any], out: Path, device: torch.device) -> dict[str, Any]:
    """Run the trained bundle's own ``evaluate.json`` (as a user would) and return the AUROC of each score it reports
    (DDAD reports five), the map it serves and its training report, from its ``metrics.json``."""
    root = out / "bundle"
    _run_workflow(root, ["train.json", "evaluate.json"], "evaluating", spec["overrides"], device)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    return {
        "auroc": {name: row["auroc"] for name, row in metrics["results"].items()},
        "served_map": metrics.get("served_map"),
        "training": metrics.get("training"),
    }


def _fit_baseline(
    name: str, spec: dict[str, Any], data: ComparisonData, device: torch.device
) -> tuple[Scorer, float, str, Compose]:
    transform = baseline_preprocessing(data.image_size, data.intensity_policy, data.intensity_range)
    model, weights = build_baseline(name, data.image_size, spec["teacher_weights"])
    train = load_batch(data.train, transform)
    generator = torch.Generator().manual_seed(int(spec["seed"]))
    loader = DataLoader(TensorDataset(train), batch_size=int(spec["batch_size"]), shuffle=True, generator=generator)
    batches = _Images(loader)
    if name == "reverse_distillation":
        cache = bool(spec.get("feature_cache", False))  # specs written before the option recomputed the encoder
        fit_reverse_distillation(model, batches, int(spec["rd_epochs"]), device, cache_encoder=cache)
        detail = f"{spec['rd_epochs']} epochs"
    else:
        size = fit_patchcore(model, batches, device, float(spec["coreset_sampling_ratio"]))
        detail = f"memory bank {size}"

    @torch.no_grad()
    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores = model(images.to(device))
        return maps.float().cpu(), scores.float().cpu()

    scores = _score_all(score, load_batch(data.calibration, transform), int(spec["batch_size"]))[1]
    threshold = quantile_threshold(scores, data.quantile)
    return score, threshold, f"anomalib {name}, backbone {weights}, {detail}", transform


def _pixel_auroc(maps: torch.Tensor, masks: torch.Tensor | None) -> float | None:
    """AUROC of every test pixel's map value against the lesion masks (all images pooled, as RD and PatchCore report
    it); ``None`` without masks or when the maps are not at the masks' size."""
    if masks is None or int(masks.sum()) == 0 or maps.shape[-2:] != masks.shape[-2:]:
        return None
    return roc_auc(maps[:, :1].flatten().numpy(), masks.flatten().numpy().astype(np.int64))


class _Images:
    """Re-iterable view of a ``TensorDataset`` loader that yields the image tensors alone."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (batch[0] for batch in self.loader)


def run_method(spec: dict[str, Any], method: str, out: Path) -> dict[str, Any]:
    """Fit ``method`` (``"bundle"`` or one of the anomalib baselines) on the spec's bundle data and score its test
    split; returns the result record (see the module docstring)."""
    device = torch.device(spec["device"])
    seed_everything(int(spec["seed"]))
    parser = bundle_parser(Path(spec["configs"]), spec["overrides"])
    data = comparison_data(parser)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if method == BUNDLE:
        score, threshold, description, transform = _fit_bundle(spec, out, device)
    elif method in BASELINES:
        score, threshold, description, transform = _fit_baseline(method, spec, data, device)
    else:
        raise ValueError(f"unknown method {method!r}; expected '{BUNDLE}' or one of {BASELINES}")
    fit_seconds = time.perf_counter() - start

    test = load_batch(data.test, transform)
    maps, scores = _score_all(score, test, int(spec["batch_size"]))
    pixel_auroc = _pixel_auroc(maps, load_masks(data.test, data.image_size))
    one = test[:1]
    latency = time_calls(lambda: score(one), int(spec["timing_repeats"]), warmup=2, device=device)
    record = {
        "method": method,
        "description": description,
        "threshold": float(threshold),
        "pixel_auroc": pixel_auroc,
        "scores": [float(s) for s in scores],
        "labels": [int(it["label"]) for it in data.test],
        "files": [str(it["image"]) for it in data.test],
        "fit_seconds": round(fit_seconds, 2),
        "latency_ms": round(1000 * float(np.median(latency)), 2),
        # Linux reports ru_maxrss in KiB
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "data": data.summary(),
    }
    if method == BUNDLE:
        record["evaluation"] = _evaluate_bundle(spec, out, device)
    return record


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python -m medad_monai.comparison SPEC_JSON METHOD RESULT_JSON")
    spec_file, method, result_file = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    spec = json.loads(Path(spec_file).read_text())
    if int(spec.get("threads", 0)) > 0:
        torch.set_num_threads(int(spec["threads"]))
    record = run_method(spec, method, Path(result_file).parent)
    atomic_write_json(record, result_file)
