"""One command that compares a bundle with anomalib's reverse distillation and PatchCore on the same data and
machine (docs/comparison.md): ``medad-monai compare-anomalib --bundle pdd --out runs/compare-pdd``.

Each method runs in its own process (``python -m medad_monai.comparison``, see
:mod:`~medad_monai.comparison.worker`), one after the other, on the bundle's data
(:mod:`~medad_monai.comparison.data`). Every threshold comes from normals outside the test split (the bundle's own
calibration; the baselines' quantile of the same validation or held-out normals), so the sensitivity/specificity
columns are honest operating points, not test-tuned ones. ``results.md`` puts the image-level metrics beside the
costs (fit time, per-image latency, peak memory) and their ratios to the bundle's, all measured in this one run;
``roc.png`` and ``score_histograms.png`` show the scores.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medad_monai.bundle import resolve_bundle_root
from medad_monai.comparison.baselines import BASELINES
from medad_monai.comparison.worker import BUNDLE
from medad_monai.io import atomic_write_json, atomic_write_text
from medad_monai.metrics.paired import compare_aurocs
from medad_monai.metrics.ranking import average_precision, f1_max, roc_auc
from medad_monai.provenance import provenance
from medad_monai.visualize import plot_roc_curves, plot_score_histograms

__all__ = [
    "ALLOCATOR_ENV",
    "allocator_settings",
    "BUNDLE_NAMES",
    "DEFAULT_METHODS",
    "REPORT_FILES",
    "anomalib_version",
    "bundle_overrides",
    "compare_with_anomalib",
    "comparison_spec",
    "format_csv",
    "format_results",
    "launch_method",
    "method_environment",
    "remove_reports",
    "summarize",
    "write_report",
]

logger = logging.getLogger("medad_monai")

DEFAULT_METHODS: tuple[str, ...] = (BUNDLE, *BASELINES)
BUNDLE_NAMES: tuple[str, ...] = ("ddad", "d24fad", "pdd")
REPORT_FILES: tuple[str, ...] = ("results.md", "results.csv", "results.json", "roc.png", "score_histograms.png")
# glibc's malloc hands freed blocks above its mmap threshold back to the kernel and trims the heap top, so the large
# tensors of every training step are page-faulted in again: 12% of a DDAD training's CPU time went to the kernel
# (22 s system time in 82 s), and with these settings it trains 1.2x faster (1.6 s system time) with the same
# numbers (they change only where memory comes from). Values the user set in the environment win.
ALLOCATOR_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
    "MALLOC_TOP_PAD_": str(2**28),
}


def _configs_dir(bundle: str | os.PathLike) -> Path:
    """``"pdd"`` (a bundle of this repository) or a bundle folder -> its ``configs/`` folder."""
    root = Path(resolve_bundle_root(str(bundle))) if str(bundle) in BUNDLE_NAMES else Path(bundle)
    configs = root / "configs"
    for name in ("train.json", "evaluate.json", "metadata.json"):
        if not (configs / name).is_file():
            raise FileNotFoundError(
                f"bundle '{root}' has no configs/{name}; expected one of {BUNDLE_NAMES} or a bundle folder"
            )
    return configs


def bundle_overrides(
    config: dict[str, Any],
    dataset: str | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    teacher_weights: str | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle config overrides of a comparison. ``dataset`` is the few-shot bundle's ``target`` (its support
    and test data) or the one-class bundle's ``dataset_dir``; ``teacher_weights`` goes to the bundle's
    ``teacher_weights`` key (every teacher of the bundle: PDD's WideResNet50-2 and VMamba alike; a bundle without
    a teacher, DDAD, has none)."""
    out: dict[str, Any] = {"seed": int(seed)}
    if dataset is not None:
        out["target" if "target" in config else "dataset_dir"] = dataset
    if image_size is not None:
        out["image_size"] = int(image_size)
    if epochs is not None:
        out["epochs"] = int(epochs)
    if teacher_weights is not None and "teacher_weights" in config:  # every bundle with a teacher has the key
        out["teacher_weights"] = teacher_weights
    out.update(extra or {})
    return out


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Image metrics of one method's record (AUROC, AP, F1-max, sensitivity/specificity at its threshold), its
    pixel AUROC and its costs."""
    s, y = np.asarray(record["scores"], dtype=np.float64), np.asarray(record["labels"])
    t = float(record["threshold"])
    row = {
        "method": record["method"],
        "auroc": roc_auc(s, y),
        "ap": average_precision(s, y),
        "f1_max": f1_max(s, y)[0],
        "sensitivity": float(np.mean(s[y == 1] > t)) if np.isfinite(t) else float("nan"),
        "specificity": float(np.mean(s[y == 0] <= t)) if np.isfinite(t) else float("nan"),
    }
    for key in ("pixel_auroc", "fit_seconds", "latency_ms", "peak_rss_mb", "cuda_peak_mb", "description"):
        row[key] = record.get(key)
    evaluation = record.get("evaluation") or {}
    row["score_auroc"] = evaluation.get("auroc")  # every score of the bundle's own evaluation (DDAD: five)
    row["served_map"] = evaluation.get("served_map")
    return row


def method_comparisons(records: Sequence[dict[str, Any]], resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """The bundle's AUROC minus each baseline's on the same test images (paired bootstrap and DeLong,
    :func:`~medad_monai.metrics.paired.compare_aurocs`); empty without a bundle record."""
    bundle = next((r for r in records if r["method"] == BUNDLE), None)
    if bundle is None:
        return []
    labels = np.asarray(bundle["labels"])
    out = []
    for other in (r for r in records if r is not bundle):
        if list(other["files"]) != list(bundle["files"]) or list(other["labels"]) != list(bundle["labels"]):
            raise ValueError(f"{other['method']} was not tested on the bundle's test images in the same order")
        tests = compare_aurocs(np.asarray(bundle["scores"]), np.asarray(other["scores"]), labels, resamples, seed)
        out += [{"a": BUNDLE, "b": other["method"], **test} for test in tests]
    return out


def format_comparisons(comparisons: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`method_comparisons`."""
    if not comparisons:
        return ""
    lines = ["", "| AUROC difference (%) | value [95% CI] | p | test |", "|---|---|---|---|"]
    for c in comparisons:
        interval = f"{100 * c['difference']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
        lines.append(f"| {c['a']} - {c['b']} | {interval} | {c['p_value']:.3g} | {c['method']} |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _ratio(value: float | None, reference: float | None) -> str:
    return f"x{value / reference:.2f}" if value and reference else "n/a"


def format_results(rows: list[dict[str, Any]], title: str) -> str:
    """Markdown table: metrics (%) then costs and their ratio to the bundle's (first row if it is the bundle)."""
    ref = next((r for r in rows if r["method"] == BUNDLE), None)
    gpu = any(r.get("cuda_peak_mb") for r in rows)
    mem_key = "cuda_peak_mb" if gpu else "peak_rss_mb"
    mem_name = "CUDA peak MB" if gpu else "peak RSS MB"
    head = (
        "| method | AUROC | AP | F1-max | sens@thr | spec@thr | pixel AUROC | fit s | ms/image | "
        f"{mem_name} | fit vs bundle | latency vs bundle | memory vs bundle |"
    )
    lines = [f"### {title}", "", head, "|---|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['method']} | {100 * r['auroc']:.1f} | {100 * r['ap']:.1f} | {100 * r['f1_max']:.1f} | "
            f"{100 * r['sensitivity']:.1f} | {100 * r['specificity']:.1f} | {_percent(r['pixel_auroc'])} | "
            f"{r['fit_seconds']:.1f} | "
            f"{r['latency_ms']:.1f} | {r[mem_key]:.0f} | "
            f"{_ratio(r['fit_seconds'], ref and ref['fit_seconds'])} | "
            f"{_ratio(r['latency_ms'], ref and ref['latency_ms'])} | {_ratio(r[mem_key], ref and ref[mem_key])} |"
        )
    lines.append("")
    lines += [f"- {r['method']}: {r['description']}" for r in rows]
    return "\n".join(lines) + "\n"


def comparison_spec(
    bundle: str | os.PathLike,
    dataset: str | None = None,
    image_size: int | None = None,
    epochs: int | None = None,
    rd_epochs: int = 20,
    teacher_weights: str = "random",
    batch_size: int = 8,
    coreset_sampling_ratio: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 0,
    timing_repeats: int = 10,
    overrides: dict[str, Any] | None = None,
    feature_cache: bool = True,
) -> dict[str, Any]:
    """The JSON spec every method of one comparison reads (``python -m medad_monai.comparison SPEC ...``): the
    bundle's ``configs/`` folder, its overrides (:func:`bundle_overrides`) and the shared settings (see
    :func:`compare_with_anomalib` for the arguments)."""
    configs = _configs_dir(bundle)
    config = json.loads((configs / "train.json").read_text())
    # the bundle's own frozen-teacher cache (PDD, D²4FAD): the same training, later epochs without the teacher
    cache = {"teacher_cache": bool(feature_cache)} if "teacher_cache" in config else {}
    return {
        "configs": str(configs),
        "overrides": bundle_overrides(
            config, dataset, image_size, epochs, teacher_weights, seed, {**cache, **(overrides or {})}
        ),
        "feature_cache": bool(feature_cache),
        "teacher_weights": teacher_weights,
        "rd_epochs": int(rd_epochs),
        "batch_size": int(batch_size),
        "coreset_sampling_ratio": float(coreset_sampling_ratio),
        "seed": int(seed),
        "device": str(device),
        "threads": int(threads),
        "timing_repeats": int(timing_repeats),
    }


def allocator_settings(env: dict[str, str]) -> dict[str, str]:
    """The allocator variables (:data:`ALLOCATOR_ENV`) in ``env``, for the provenance of a run."""
    return {k: env[k] for k in ALLOCATOR_ENV if k in env}


def method_environment() -> dict[str, str]:
    """The environment of a method's process: this process's, with :data:`ALLOCATOR_ENV` where it sets none."""
    return {**ALLOCATOR_ENV, **os.environ}


def launch_method(spec_file: Path, method: str, result: Path) -> dict[str, Any] | None:
    """Fit and test ``method`` in its own process (:mod:`~medad_monai.comparison.worker`, environment
    :func:`method_environment`) on the spec in ``spec_file``; returns its record (also in ``result``), or ``None``
    when it failed (its log is on stderr)."""
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "medad_monai.comparison", str(spec_file), method, str(result)]
    if subprocess.run(cmd, check=False, env=method_environment()).returncode != 0 or not result.is_file():
        logger.error("comparison: %s failed (its log is above)", method)
        return None
    return json.loads(result.read_text())


def remove_reports(out: Path, names: Sequence[str] = REPORT_FILES) -> None:
    """Delete the report files ``names`` of an earlier run in ``out``, so that they never pass for this run's."""
    for name in names:
        (out / name).unlink(missing_ok=True)


def format_csv(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """CSV text: a header of ``keys``, then one line per row (a missing or ``None`` value is empty)."""
    lines = [",".join(keys)] + [",".join("" if r.get(k) is None else str(r[k]) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


def compare_with_anomalib(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    dataset: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    image_size: int | None = None,
    epochs: int | None = None,
    rd_epochs: int = 20,
    teacher_weights: str = "random",
    batch_size: int = 8,
    coreset_sampling_ratio: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 0,
    timing_repeats: int = 10,
    overrides: dict[str, Any] | None = None,
    feature_cache: bool = True,
) -> list[dict[str, Any]]:
    """Fit and test the bundle and the anomalib baselines; write ``results.md/.csv/.json``, ``roc.png`` and
    ``score_histograms.png`` in ``out``. Returns one summary row per method that finished.

    Args:
        bundle: ``"ddad"``, ``"d24fad"``, ``"pdd"`` or a bundle folder.
        out: output folder (a ``bundle/`` copy with the trained model, ``<method>.json`` per method, the report).
        dataset: the data (a folder in the ``train/good``, ``test/good``, ``test/bad`` layout or ``demo:<domain>``);
            default the bundle's.
        methods: any of ``bundle``, ``reverse_distillation``, ``patchcore``.
        image_size, epochs: bundle overrides (the baselines use the same ``image_size``).
        rd_epochs: reverse distillation epochs over the training normals.
        teacher_weights: WideResNet50-2 weights of every method (``random``, ``imagenet`` or a ``.pth`` path).
        batch_size: baselines' training batch size, and everyone's scoring batch size.
        coreset_sampling_ratio: PatchCore's coreset fraction.
        seed: seed of every method (and of the bundle's data split).
        device: where every method runs; threads: torch CPU threads per method (0: torch default).
        timing_repeats: timed single-image calls per method (after two warm-up calls).
        overrides: further bundle config overrides.
        feature_cache: keep the frozen networks' features of each training image after the first epoch (the
            bundles' ``teacher_cache``, RD's encoder): the same models and scores, a shorter ``fit s``; it holds
            the features in memory for the fit (``False``: recompute them every epoch, e.g. on a GPU where the
            teacher is cheap and host memory is not).

    Raises:
        RuntimeError: a method failed (after the others ran and the report of those that finished is written).
    """
    unknown = [m for m in methods if m not in DEFAULT_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {DEFAULT_METHODS}")
    spec = comparison_spec(
        bundle,
        dataset=dataset,
        image_size=image_size,
        epochs=epochs,
        rd_epochs=rd_epochs,
        teacher_weights=teacher_weights,
        batch_size=batch_size,
        coreset_sampling_ratio=coreset_sampling_ratio,
        seed=seed,
        device=device,
        threads=threads,
        timing_repeats=timing_repeats,
        overrides=overrides,
        feature_cache=feature_cache,
    )
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec, out_dir / "spec.json")
    remove_reports(out_dir)  # a report of an earlier run in the same folder must not pass for this one's
    records, failed = [], []
    for method in methods:
        logger.info("compare-anomalib: %s", method)
        record = launch_method(out_dir / "spec.json", method, out_dir / f"{method}.json")
        if record is None:
            failed.append(method)
        else:
            records.append(record)
    rows = write_report(out_dir, records, spec) if records else []
    if failed:
        raise RuntimeError(f"compare-anomalib: {', '.join(failed)} failed; the report in {out_dir} lacks them")
    return rows


def anomalib_version() -> str | None:
    """The installed anomalib's version (``None`` without anomalib)."""
    try:
        return metadata.version("anomalib")
    except metadata.PackageNotFoundError:
        return None


def write_report(out: Path, records: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Write one comparison's ``results.md/.csv/.json``, ``roc.png`` and ``score_histograms.png`` in ``out`` from
    its methods' ``records`` (all on the same test split); returns their summary rows (:func:`summarize`)."""
    rows = [summarize(r) for r in records]
    name = Path(spec["configs"]).parent.name
    data = records[0]["data"]
    title = f"{name} vs anomalib on {data['dataset']} ({data['setting']}, {data['image_size']} px)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    comparisons = method_comparisons(records, seed=int(spec["seed"]))
    text = format_results(rows, title) + format_comparisons(comparisons)
    text += (
        f"\nData: {data['train_images']} training normals, {data['calibration_images']} calibration normals, "
        f"{data['test_images']} test images ({data['test_anomalous']} anomalous). Thresholds: the "
        f"{data['threshold_quantile']} quantile of normals outside the test split. Seed {spec['seed']}; device "
        f"{spec['device']}; WideResNet50-2 weights '{spec['teacher_weights']}'; load average {load:.1f} at the end "
        f"(ratios are side by side in this run). Bundle overrides: {json.dumps(spec['overrides'])}.\n"
    )
    atomic_write_text(text, out / "results.md")
    keys = ["method", "auroc", "ap", "f1_max", "sensitivity", "specificity", "pixel_auroc", "fit_seconds", "latency_ms"]
    keys += ["peak_rss_mb", "cuda_peak_mb"]
    atomic_write_text(format_csv(rows, keys), out / "results.csv")
    atomic_write_json(
        {
            "rows": rows,
            "comparisons": comparisons,
            "spec": spec,
            "provenance": provenance(
                spec["seed"], anomalib=anomalib_version(), allocator=allocator_settings(method_environment())
            ),
        },
        out / "results.json",
    )
    labels = np.asarray(records[0]["labels"])
    scores = {r["method"]: np.asarray(r["scores"]) for r in records}
    plot_roc_curves(scores, labels, out / "roc.png", title=title)
    plot_score_histograms(scores, labels, out / "score_histograms.png")
    return rows
