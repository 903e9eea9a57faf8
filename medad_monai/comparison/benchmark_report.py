"""The report of ``medad-monai benchmark`` (:mod:`~medad_monai.comparison.benchmark`): per-bundle tables of mean ±
sample std over seeds, the long CSV/JSON rows and the image AUROC chart.

The input is the long rows: one per bundle, demo domain, seed and method, either a comparison summary
(:func:`~medad_monai.comparison.runner.summarize`) with ``status: ok`` or ``status: failed``. A domain's table cell
is mean ± std over its seeds; the mean row averages the domains of each seed, then takes mean ± std over the
seeds (so its mean is the mean of the domain means). A cell with a failed or missing run reads ``failed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medad_monai.comparison.baselines import BASELINES
from medad_monai.comparison.runner import (
    DEFAULT_METHODS,
    allocator_settings,
    anomalib_version,
    format_csv,
    method_environment,
    summarize,
)
from medad_monai.comparison.worker import BUNDLE
from medad_monai.io import atomic_write_json, atomic_write_text
from medad_monai.provenance import provenance
from medad_monai.visualize import plot_grouped_bars

__all__ = [
    "BENCHMARK_REPORTS",
    "Stat",
    "aggregate",
    "cell_name",
    "format_benchmark",
    "format_duration",
    "long_rows",
    "write_benchmark_report",
]

BENCHMARK_REPORTS: tuple[str, ...] = ("results.md", "results.csv", "results.json", "benchmark.png")
BASELINE_LABELS: dict[str, str] = {"reverse_distillation": "RD", "patchcore": "PatchCore"}
# (row key, column name, shown in %)
TABLE_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("auroc", "AUROC", True),
    ("ap", "AP", True),
    ("pixel_auroc", "pixel AUROC", True),
    ("fit_seconds", "fit s", False),
    ("latency_ms", "ms/image", False),
)
CSV_KEYS: tuple[str, ...] = (
    "bundle",
    "domain",
    "seed",
    "method",
    "status",
    "setting",
    "auroc",
    "ap",
    "f1_max",
    "sensitivity",
    "specificity",
    "pixel_auroc",
    "fit_seconds",
    "latency_ms",
    "peak_rss_mb",
    "cuda_peak_mb",
    "baseline_key",
    "resumed",
)
MEAN = "mean"
FAILED = "failed"


def cell_name(bundle: str, domain: str, seed: int) -> str:
    """``"pdd on demo:fundus, seed 0"``: how logs and reports name a benchmark cell."""
    return f"{bundle} on demo:{domain}, seed {seed}"


def long_rows(
    bundle: str,
    domain: str,
    seed: int,
    records: dict[str, dict[str, Any]],
    key: str | None,
    resumed: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per method of a cell: the summary of its record or ``status: failed`` (no record); the baselines'
    rows carry their cache ``key``; ``resumed`` marks the methods whose record an earlier run (``--resume``) made."""
    rows = []
    for method in DEFAULT_METHODS:
        row: dict[str, Any] = {"bundle": bundle, "domain": domain, "seed": seed, "method": method}
        record = records.get(method)
        if record is None:
            row["status"] = FAILED
        else:
            row.update(summarize(record), status="ok", setting=record["data"]["setting"])
        row["baseline_key"] = key if method in BASELINES else None
        row["resumed"] = method in resumed
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Stat:
    """A table cell: mean ± sample standard deviation (``std`` None for one seed), or a ``status`` of ``"failed"``
    (a run is missing) or ``"n/a"`` (the method does not report the metric, e.g. pixel AUROC without masks)."""

    mean: float = math.nan
    std: float | None = None
    status: str = "ok"

    def format(self, percent: bool) -> str:
        if self.status != "ok":
            return self.status
        scale = 100.0 if percent else 1.0
        text = f"{scale * self.mean:.1f}"
        return text if self.std is None else f"{text} ± {scale * self.std:.1f}"


def _stat(groups: list[list[dict[str, Any] | None]], metric: str) -> Stat:
    """Mean ± sample std over ``groups`` of each group's mean ``metric`` (a group: one seed's runs)."""
    runs = [r for group in groups for r in group]
    if any(r is None or r["status"] != "ok" for r in runs):
        return Stat(status=FAILED)
    if any(r[metric] is None for r in runs):
        return Stat(status="n/a")
    values = [float(np.mean([r[metric] for r in group])) for group in groups]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return Stat(float(np.mean(values)), std)


def aggregate(
    rows: Sequence[dict[str, Any]], bundle: str, domains: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, dict[str, Stat]]]:
    """``table[domain or "mean"][method][metric]`` of ``bundle`` from the long ``rows`` (one per bundle, domain,
    seed and method; a missing row counts as failed). A domain's cell is mean ± std over seeds; the mean row
    averages the domains of each seed, then takes mean ± std over seeds (its mean is the mean of the domain means)."""
    index = {(r["domain"], int(r["seed"]), r["method"]): r for r in rows if r["bundle"] == bundle}
    table: dict[str, dict[str, dict[str, Stat]]] = {d: {} for d in (*domains, MEAN)}
    for method in DEFAULT_METHODS:
        runs = {(d, s): index.get((d, int(s), method)) for d in domains for s in seeds}
        for domain in domains:
            groups = [[runs[domain, s]] for s in seeds]
            table[domain][method] = {m: _stat(groups, m) for m, _, _ in TABLE_METRICS}
        groups = [[runs[d, s] for d in domains] for s in seeds]
        table[MEAN][method] = {m: _stat(groups, m) for m, _, _ in TABLE_METRICS}
    return table


def score_table(
    rows: Sequence[dict[str, Any]], bundle: str, domains: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, Stat]]:
    """``table[domain or "mean"][score]``: image AUROC of every score of the bundle's own evaluation (DDAD reports
    five maps), mean ± std over seeds as :func:`aggregate`; empty when the bundle reports a single score."""
    runs = {(r["domain"], int(r["seed"])): r for r in rows if r["bundle"] == bundle and r["method"] == BUNDLE}
    names: list[str] = []
    for r in runs.values():
        for name in r.get("score_auroc") or {}:
            if name not in names:
                names.append(name)
    if len(names) < 2:
        return {}

    def value(domain: str, seed: int, name: str) -> dict[str, Any] | None:
        r = runs.get((domain, int(seed)))
        if r is None or r["status"] != "ok" or not r.get("score_auroc"):
            return None
        return {"status": "ok", "v": r["score_auroc"].get(name)}

    table: dict[str, dict[str, Stat]] = {}
    for domain in domains:
        table[domain] = {n: _stat([[value(domain, s, n)] for s in seeds], "v") for n in names}
    table[MEAN] = {n: _stat([[value(d, s, n) for d in domains] for s in seeds], "v") for n in names}
    return table


def _served_maps(rows: Sequence[dict[str, Any]], bundle: str) -> str:
    served = sorted({str(r["served_map"]) for r in rows if r["bundle"] == bundle and r.get("served_map")})
    return f" The served map: {', '.join(f'`{s}`' for s in served)}." if served else ""


def _method_label(method: str, bundle: str) -> str:
    return bundle if method == BUNDLE else BASELINE_LABELS.get(method, method)


def _run_name(row: dict[str, Any]) -> str:
    return f"{cell_name(row['bundle'], row['domain'], int(row['seed']))}: {row['method']}"


def format_duration(seconds: float) -> str:
    """``"1 h 02 min 05 s"``, ``"3 min 07 s"``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def _setting_line(rows: Sequence[dict[str, Any]], bundle: str) -> str:
    setting = next((r["setting"] for r in rows if r["bundle"] == bundle and r.get("setting")), None)
    if setting == "few-shot":
        return (
            "few-shot, leave-one-domain-out: trained on the other domains, K normals of the target; RD and PatchCore "
            "learn from the same K support images"
        )
    return "one-class: every method trains on the domain's normals" if setting else "no run finished"


def format_benchmark(
    rows: Sequence[dict[str, Any]],
    bundles: Sequence[str],
    domains: Sequence[str],
    seeds: Sequence[int],
    settings: dict[str, Any],
    wall_seconds: float,
) -> str:
    """``results.md``: one table per bundle (rows: domains, then their mean; for each method image AUROC, AP and
    pixel AUROC in %, fit seconds, ms/image), the settings, the failed runs and the total wall-clock time."""
    seed_text = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(str(s) for s in seeds)})"
    lines = [
        "## Benchmark: bundles vs anomalib reverse distillation (RD) and PatchCore",
        "",
        f"Demo domains, {seed_text}; every bundle at its defaults. "
        + (
            "Each cell is mean ± sample std (ddof=1) over the seeds; the mean row averages the domains of each seed, "
            "then takes mean ± std over the seeds. "
            if len(seeds) > 1
            else ""
        )
        + "AUROC (image), AP and pixel AUROC in %; fit s is training plus threshold calibration, ms/image the median "
        "single-image latency. WideResNet50-2 weights "
        f"'{settings['teacher_weights']}'; RD {settings['rd_epochs']} epochs; device {settings['device']}; "
        f"threads {settings['threads'] or 'torch default'} per run; "
        + (
            f"{settings['jobs']} runs at a time (fit s and ms/image measured beside another run); "
            if int(settings.get("jobs", 1)) > 1
            else "one run at a time; "
        )
        + (
            "frozen networks' features cached after the first epoch (PDD and D²4FAD teachers, RD's encoder: the same "
            "results, shorter fit s)."
            if settings.get("feature_cache")
            else "frozen networks' features recomputed every epoch."
        ),
    ]
    for bundle in bundles:
        table = aggregate(rows, bundle, domains, seeds)
        head = ["domain"] + [
            f"{_method_label(m, bundle)} {name}" for m in DEFAULT_METHODS for _, name, _ in TABLE_METRICS
        ]
        lines += ["", f"### {bundle} ({_setting_line(rows, bundle)})", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for domain, cells in table.items():
            values = [cells[m][metric].format(pct) for m in DEFAULT_METHODS for metric, _, pct in TABLE_METRICS]
            lines.append(f"| {domain} | " + " | ".join(values) + " |")
        scores = score_table(rows, bundle, domains, seeds)
        if scores:
            names = list(next(iter(scores.values())))
            lines += [
                "",
                f"Every score of the {bundle} bundle's own evaluation (image AUROC %).{_served_maps(rows, bundle)}",
            ]
            lines += ["", "| domain | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
            for domain, cells in scores.items():
                lines.append(f"| {domain} | " + " | ".join(cells[n].format(True) for n in names) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed (marked `failed` above; their logs are in the command's output):"]
        lines += [f"- {_run_name(r)}" for r in failed]
    reused = sum(bool(r.get("resumed")) for r in rows)
    note = f" (this run; {reused} of {len(rows)} results taken from an earlier run with --resume)" if reused else ""
    lines += ["", f"Total wall-clock time: {format_duration(wall_seconds)}{note}."]
    return "\n".join(lines) + "\n"


def _panels(
    rows: Sequence[dict[str, Any]], bundles: Sequence[str], domains: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, tuple[list[float], list[float] | None]]]:
    """Image AUROC (%) per domain and mean, per method, per bundle, for :func:`plot_grouped_bars`."""
    panels = {}
    for bundle in bundles:
        table = aggregate(rows, bundle, domains, seeds)
        series = {}
        for method in DEFAULT_METHODS:
            stats = [table[d][method]["auroc"] for d in (*domains, MEAN)]
            heights = [100 * s.mean if s.status == "ok" else math.nan for s in stats]
            errors = [100 * (s.std or 0.0) for s in stats] if len(seeds) > 1 else None
            series[_method_label(method, bundle)] = (heights, errors)
        panels[bundle] = series
    return panels


def write_benchmark_report(
    out: Path,
    rows: list[dict[str, Any]],
    bundles: Sequence[str],
    domains: Sequence[str],
    seeds: Sequence[int],
    settings: dict[str, Any],
    wall_seconds: float,
    started: datetime,
) -> list[str]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``benchmark.png`` in ``out``; returns the names
    of the failed runs."""
    failed = [_run_name(r) for r in rows if r["status"] != "ok"]
    atomic_write_text(format_benchmark(rows, bundles, domains, seeds, settings, wall_seconds), out / "results.md")
    atomic_write_text(format_csv(rows, CSV_KEYS), out / "results.csv")
    record = {
        "rows": rows,
        "settings": {**settings, "bundles": list(bundles), "domains": list(domains), "seeds": list(seeds)},
        "failed": failed,
        "provenance": provenance(
            None,
            seeds=list(seeds),
            anomalib=anomalib_version(),
            allocator=allocator_settings(method_environment()),
            wall_seconds=round(wall_seconds, 1),
            started=started.isoformat(timespec="seconds"),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ),
    }
    atomic_write_json(record, out / "results.json")
    plot_grouped_bars(
        _panels(rows, bundles, domains, seeds),
        [*domains, MEAN],
        out / "benchmark.png",
        ylabel="image AUROC (%)",
        ylim=(0, 105),
    )
    return failed
