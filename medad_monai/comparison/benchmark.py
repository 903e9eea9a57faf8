"""The accuracy table in one command: every bundle and anomalib's reverse distillation (RD) and PatchCore on every
demo domain and seed (``medad-monai benchmark --out runs/benchmark``).

Each cell (bundle x domain x seed) is one comparison (:mod:`~medad_monai.comparison.runner`) with the bundle at its
defaults: a one-class bundle (DDAD, PDD) trains on the domain (``dataset_dir``); the few-shot bundle (D²4FAD)
is evaluated leave-one-domain-out (``target`` the domain, ``sources`` the other domains) and the baselines learn
from its K support images. A cell writes the usual comparison outputs in ``out/<bundle>/<domain>/seed<k>/``.

A baseline is fitted once per :func:`~medad_monai.comparison.cache.baseline_key` (DDAD and PDD on the same domain
and seed share their data, hence RD and PatchCore); its record is kept in ``out/baselines/<key>/``. With
``resume``, a bundle whose record exists under an equal ``spec.json`` and a baseline whose record exists under its
key are not run again, so a run stopped halfway continues where it stopped.

``out/`` receives the report (:mod:`~medad_monai.comparison.benchmark_report`): ``results.md`` (one table per
bundle: rows the domains and their mean, columns image AUROC, AP, pixel AUROC, fit seconds and ms/image of each
method, mean ± sample std over seeds), ``results.csv`` (one row per bundle, domain, seed and method),
``results.json`` (those rows, the settings and the provenance) and ``benchmark.png`` (image AUROC per domain, one
panel per bundle). A failed run is logged, named and marked ``failed`` in the report; the others still run, and
:func:`run_benchmark` raises at the end.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medad_monai.bundle import resolve_bundle_root
from medad_monai.comparison.baselines import BASELINES
from medad_monai.comparison.benchmark_report import (
    BENCHMARK_REPORTS,
    cell_name,
    format_duration,
    long_rows,
    write_benchmark_report,
)
from medad_monai.comparison.cache import baseline_key, baseline_key_material
from medad_monai.comparison.d24fad_grid import parse_list
from medad_monai.comparison.runner import (
    BUNDLE_NAMES,
    DEFAULT_METHODS,
    REPORT_FILES,
    comparison_spec,
    launch_method,
    remove_reports,
    write_report,
)
from medad_monai.comparison.worker import BUNDLE
from medad_monai.data.demo import DEMO_DOMAINS
from medad_monai.io import atomic_write_json

__all__ = ["BenchmarkCell", "FittedBaselines", "cell_spec", "leave_one_out_sources", "run_benchmark"]

logger = logging.getLogger("medad_monai")


@dataclass(frozen=True)
class BenchmarkCell:
    """One comparison of the benchmark: ``bundle`` on the demo ``domain`` with ``seed``."""

    bundle: str
    domain: str
    seed: int

    @property
    def dataset(self) -> str:
        return f"demo:{self.domain}"

    @property
    def name(self) -> str:
        return cell_name(self.bundle, self.domain, self.seed)

    def folder(self, out: Path) -> Path:
        return out / self.bundle / self.domain / f"seed{self.seed}"


def leave_one_out_sources(target: str, domains: Sequence[str]) -> list[str]:
    """The few-shot bundle's training domains for ``target``: the other benchmark ``domains``, or every other demo
    domain when ``target`` is the only one asked for (``demo:<domain>`` each)."""
    others = [d for d in domains if d != target] or [d for d in DEMO_DOMAINS if d != target]
    return [f"demo:{d}" for d in others]


def cell_spec(cell: BenchmarkCell, domains: Sequence[str], **settings: Any) -> dict[str, Any]:
    """The comparison spec of ``cell`` (:func:`~medad_monai.comparison.runner.comparison_spec`): the bundle at its
    defaults but for the seed, the data (``dataset_dir``, or the few-shot ``target`` with leave-one-domain-out
    ``sources``) and ``settings`` (teacher weights and the baselines' settings)."""
    config = json.loads((Path(resolve_bundle_root(cell.bundle)) / "configs" / "train.json").read_text())
    extra = {"sources": leave_one_out_sources(cell.domain, domains)} if "sources" in config else None
    return comparison_spec(cell.bundle, dataset=cell.dataset, seed=cell.seed, overrides=extra, **settings)


class FittedBaselines:
    """The baseline records of this run by ``(key, method)``; cells that run at the same time and need the same
    baseline wait for one fit instead of fitting it twice."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[dict[str, Any] | None, bool]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, key: str, method: str) -> threading.Lock:
        """The lock held while baseline ``method`` of ``key`` is looked up or fitted."""
        with self._guard:
            return self._locks.setdefault((key, method), threading.Lock())


def _baseline_record(
    method: str, spec: dict[str, Any], material: dict[str, Any], out: Path, resume: bool, fitted: FittedBaselines
) -> tuple[dict[str, Any] | None, bool]:
    """The record of baseline ``method`` for ``spec`` (key ``material``): from this run's ``fitted`` runs, from
    ``out/baselines/<key>/`` with ``resume``, else fitted now (in its own process) and kept there. Returns it
    (``None``: failed) and whether it comes from an earlier run."""
    key = baseline_key(material)
    with fitted.lock(key, method):
        if (key, method) in fitted.records:
            logger.info("benchmark: %s: reusing baseline %s", method, key)
            return fitted.records[key, method]
        folder = out / "baselines" / key
        result = folder / f"{method}.json"
        earlier = resume and result.is_file()
        if earlier:
            logger.info("benchmark: %s: reusing baseline %s (--resume)", method, key)
            record = json.loads(result.read_text())
        else:
            atomic_write_json(material, folder / "key.json")
            atomic_write_json(spec, folder / "spec.json")
            record = launch_method(folder / "spec.json", method, result)
        fitted.records[key, method] = record, earlier
    return record, earlier


def _run_cell(
    cell: BenchmarkCell,
    spec: dict[str, Any],
    out: Path,
    resume: bool,
    fitted: FittedBaselines,
) -> tuple[dict[str, dict[str, Any]], str, list[str]]:
    """Run (or, with ``resume``, reuse) the bundle and the baselines of ``cell``; write its comparison report.
    Returns the records of the methods that finished, the baseline key and the methods taken from an earlier run."""
    material = baseline_key_material(spec)  # lists the data: a cell whose data cannot be read fails here, at once
    folder = cell.folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / "spec.json"
    same = resume and spec_file.is_file() and json.loads(spec_file.read_text()) == spec
    if not same:  # nothing of an earlier run under another spec may pass for this one's
        remove_reports(folder, (*REPORT_FILES, *(f"{m}.json" for m in DEFAULT_METHODS)))
        atomic_write_json(spec, spec_file)
    records: dict[str, dict[str, Any]] = {}
    result = folder / f"{BUNDLE}.json"
    resumed = [BUNDLE] if same and result.is_file() else []
    if resumed:
        logger.info("benchmark: %s: reusing the bundle's result (--resume)", cell.name)
        record = json.loads(result.read_text())
    else:
        record = launch_method(spec_file, BUNDLE, result)
    if record is not None:
        records[BUNDLE] = record
    for method in BASELINES:
        record, earlier = _baseline_record(method, spec, material, out, resume, fitted)
        resumed += [method] if earlier else []
        if record is not None:
            records[method] = record
            atomic_write_json(record, folder / f"{method}.json")
    if records:
        write_report(folder, [records[m] for m in DEFAULT_METHODS if m in records], spec)
    return records, baseline_key(material), resumed


def run_benchmark(
    out: str | os.PathLike,
    bundles: str | Sequence[str] | None = None,
    domains: str | Sequence[str] | None = None,
    seeds: int | str | Sequence[int] = (0,),
    rd_epochs: int = 20,
    teacher_weights: str = "random",
    batch_size: int = 8,
    coreset_sampling_ratio: float = 0.1,
    device: str = "cpu",
    threads: int = 0,
    timing_repeats: int = 10,
    resume: bool = False,
    feature_cache: bool = True,
    jobs: int = 2,
) -> list[dict[str, Any]]:
    """Run every bundle, RD and PatchCore on every demo domain and seed; write the report in ``out`` (see the module
    docstring). Returns the long rows (one per bundle, domain, seed and method).

    Args:
        out: output folder.
        bundles: any of ``ddad``, ``d24fad``, ``pdd`` (a list or a comma-separated string; default all three).
        domains: demo domains (``brain_mr`` or ``demo:brain_mr``; default all of them).
        seeds: seeds of every method and of the data splits (one run per seed).
        rd_epochs, teacher_weights, batch_size, coreset_sampling_ratio, device, threads, timing_repeats,
            feature_cache: as for :func:`~medad_monai.comparison.runner.compare_with_anomalib`.
        resume: reuse the results of an earlier run in ``out`` whose settings equal this one's.
        jobs: cells run at the same time, each method in its own process; with ``threads`` 0 each process gets
            ``cpu_count // jobs`` threads. The default 2 trains 1.2x faster on 2 cores than one at a time with 2
            threads (small convolutions scale badly over threads); the costs are then measured beside another run,
            comparable within the run; ``jobs=1`` measures every method alone.

    Raises:
        ValueError: an unknown bundle or domain, or nothing to run.
        RuntimeError: a run failed (after every other one ran and the report is written; it names the failed ones).
    """
    bundle_names = (parse_list(bundles) or []) if bundles else list(BUNDLE_NAMES)
    domain_names = [d.removeprefix("demo:") for d in parse_list(domains) or []] if domains else list(DEMO_DOMAINS)
    seed_list = [int(s) for s in parse_list(seeds) or []]
    unknown = [b for b in bundle_names if b not in BUNDLE_NAMES] + [d for d in domain_names if d not in DEMO_DOMAINS]
    if unknown:
        raise ValueError(
            f"unknown bundle(s) or domain(s) {unknown}; bundles {BUNDLE_NAMES}, domains {tuple(DEMO_DOMAINS)}"
        )
    if not (bundle_names and domain_names and seed_list):
        raise ValueError("the benchmark needs at least one bundle, one domain and one seed")
    bundle_names, domain_names, seed_list = (list(dict.fromkeys(v)) for v in (bundle_names, domain_names, seed_list))
    if int(jobs) < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if int(threads) == 0 and int(jobs) > 1:  # jobs x threads = the cores, so the runs do not oversubscribe them
        threads = max(1, (os.cpu_count() or 1) // int(jobs))
    settings: dict[str, Any] = {
        "rd_epochs": int(rd_epochs),
        "teacher_weights": str(teacher_weights),
        "batch_size": int(batch_size),
        "coreset_sampling_ratio": float(coreset_sampling_ratio),
        "device": str(device),
        "threads": int(threads),
        "timing_repeats": int(timing_repeats),
        "feature_cache": bool(feature_cache),
        "jobs": int(jobs),
    }
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_reports(out_dir, BENCHMARK_REPORTS)  # an earlier report must not pass for this run's
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    cells = [BenchmarkCell(b, d, s) for b in bundle_names for d in domain_names for s in seed_list]
    fitted = FittedBaselines()
    spec_settings = {k: v for k, v in settings.items() if k != "jobs"}  # how many run at once is not a cell's

    def run(numbered: tuple[int, BenchmarkCell]) -> list[dict[str, Any]]:
        i, cell = numbered
        elapsed = format_duration(time.perf_counter() - clock)
        logger.info("benchmark: [%d/%d] %s (%s elapsed)", i, len(cells), cell.name, elapsed)
        try:
            spec = cell_spec(cell, domain_names, **spec_settings)
            records, key, resumed = _run_cell(cell, spec, out_dir, resume, fitted)
        except Exception:
            logger.exception("benchmark: %s failed", cell.name)
            records, key, resumed = {}, None, []
        return long_rows(cell.bundle, cell.domain, cell.seed, records, key, resumed)

    with ThreadPoolExecutor(max_workers=int(jobs)) as pool:  # map keeps the cells' order in the report
        rows = [row for cell_rows in pool.map(run, enumerate(cells, 1)) for row in cell_rows]
    wall = time.perf_counter() - clock
    failed = write_benchmark_report(out_dir, rows, bundle_names, domain_names, seed_list, settings, wall, started)
    if failed:
        raise RuntimeError(f"benchmark: {len(failed)} run(s) failed: {'; '.join(failed)}; see {out_dir / 'results.md'}")
    return rows
