"""The evaluation report: a results table, ROC curves, score histograms and provenance, written at completion."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from medad_monai.io import atomic_write_json, atomic_write_text
from medad_monai.metrics.bootstrap import bootstrap_ci
from medad_monai.metrics.operating_points import DEFAULT_TARGET_SPECIFICITIES, specificity_operating_points
from medad_monai.metrics.paired import compare_aurocs
from medad_monai.metrics.ranking import f1_max
from medad_monai.networks.calibration import calibration_scores
from medad_monai.provenance import provenance
from medad_monai.visualize import plot_roc_curves, plot_score_histograms

__all__ = ["EvaluationReport"]


class EvaluationReport:
    """Writes ``metrics.json`` (metrics, seed, versions, data summary), ``results.md`` (a table with one row per
    score, as the papers' result tables), ``roc.png`` and ``score_histograms.png`` into ``output_dir``. The pixel
    AUROC of :class:`~medad_monai.handlers.pixel_metrics.PixelMetrics` is added when that handler is attached first.

    AUROC and AP are read from ``engine.state.metrics`` (``<score>_auroc``, ``<score>_ap``, computed by MONAI's
    handlers, see :class:`~medad_monai.handlers.score_metrics.ScoreMetrics`); F1-max is computed exactly here. Each
    comes with a stratified bootstrap 95% confidence interval (:func:`~medad_monai.metrics.bootstrap.bootstrap_ci`,
    ``bootstrap`` resamples seeded by ``seed``), and the score the model decides on (its served map, or ``score``)
    with the sensitivity and specificity of its decisions at the stored threshold and their intervals.

    From the validation-normal scores the model stored when its threshold was calibrated
    (:mod:`medad_monai.networks.calibration`) it reports the threshold each target specificity needs, with its
    interval over those normals, and the test sensitivity and specificity there
    (:func:`~medad_monai.metrics.operating_points.specificity_operating_points`). Every other score is compared with
    the decided one: the AUROC difference by a paired bootstrap and by DeLong's test
    (:func:`~medad_monai.metrics.paired.compare_aurocs`). Pixel metrics (``pixel_*`` in
    ``engine.state.metrics``, from :class:`~medad_monai.handlers.pixel_metrics.PixelMetrics`) are added when that
    handler is attached first.

    Args:
        output_dir: folder of the report.
        score_names: candidate score keys; those absent from the output are skipped.
        labels: display names of the scores (e.g. ``{"rec": "A_rec"}``).
        title: heading of the table (method, dataset).
        seed: seed of the run, recorded with the results.
        network: optional model; its ``threshold`` buffer is recorded and drawn on the histogram, and the name of
            the map it serves when it says (``served_map_name()``, DDAD: the scores differ by map).
        extra: anything else to record (e.g. the dataset folder).
        include: JSON files to embed in ``metrics.json`` under their key when they exist (e.g. the training
            report with label-free checks and choices, ``{"training": ".../training_report.json"}``).
        bootstrap: resamples of the confidence intervals (0: none).
        target_specificities: specificities to report thresholds for (from the stored validation normals).
        threshold_quantile: the quantile the stored threshold was calibrated at (recorded with the calibration).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        score_names: Sequence[str] = ("score",),
        labels: Mapping[str, str] | None = None,
        title: str = "Image-level results",
        seed: int | None = None,
        network: nn.Module | None = None,
        label_key: str = "label",
        extra: Mapping[str, Any] | None = None,
        include: Mapping[str, str | os.PathLike] | None = None,
        bootstrap: int = 2000,
        target_specificities: Sequence[float] = DEFAULT_TARGET_SPECIFICITIES,
        threshold_quantile: float | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.score_names, self.labels = list(score_names), dict(labels or {})
        self.title, self.seed, self.network, self.label_key = title, seed, network, label_key
        self.extra = dict(extra or {})
        self.include = {k: Path(v) for k, v in (include or {}).items()}
        if bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
        self.bootstrap = int(bootstrap)
        self.target_specificities = [float(v) for v in target_specificities]
        if any(not 0.0 < v < 1.0 for v in self.target_specificities):
            raise ValueError(f"target specificities must be in (0, 1), got {self.target_specificities}")
        self.threshold_quantile = threshold_quantile
        self.scores: dict[str, list[float]] = {}
        self.y: list[int] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.scores = {}
        self.y = []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            self.y.append(int(torch.as_tensor(item[self.label_key]).reshape(-1)[0]))
            for name in self.score_names:
                if name in item:
                    self.scores.setdefault(name, []).append(float(torch.as_tensor(item[name]).reshape(-1)[0]))

    def _write(self, engine: Engine) -> None:
        y = np.asarray(self.y)
        names = [n for n in self.score_names if n in self.scores]
        results: dict[str, dict[str, Any]] = {}
        both_classes = bool((y == 0).any() and (y == 1).any())
        threshold = float(self.network.threshold) if self.network is not None else float("nan")
        served = self.network.served_map_name() if hasattr(self.network, "served_map_name") else None
        decided = _decided_score(self.network, served, names)  # the score the stored threshold applies to
        for name in names:
            s = np.asarray(self.scores[name])
            row: dict[str, Any] = {
                "auroc": float(engine.state.metrics.get(f"{name}_auroc", float("nan"))),
                "ap": float(engine.state.metrics.get(f"{name}_ap", float("nan"))),
            }
            if both_classes:
                row["f1_max"] = f1_max(s, y)[0]
            if both_classes and self.bootstrap and np.isfinite(s).all():
                ci = bootstrap_ci(s, y, threshold if name == decided else None, self.bootstrap, self.seed or 0)
                for metric in ("auroc", "ap", "f1_max"):
                    row[f"{metric}_ci95"] = [ci[metric]["low"], ci[metric]["high"]]
                for metric in ("sensitivity", "specificity", "ppv", "npv"):
                    if metric in ci:
                        row[metric] = ci[metric]["value"]
                        row[f"{metric}_ci95"] = [ci[metric]["low"], ci[metric]["high"]]
            results[name] = row
        seed = self.seed or 0
        normals = calibration_scores(self.network) if self.network is not None else np.zeros(0)
        calibration = {
            "scores": normals.tolist(),
            "threshold": threshold,
            "quantile": self.threshold_quantile,
            "n": int(normals.size),
        }
        operating_points: list[dict[str, Any]] = []
        if decided in results and both_classes and normals.size and self.target_specificities:
            s = np.asarray(self.scores[decided])
            targets = self.target_specificities
            operating_points = specificity_operating_points(normals, s, y, targets, self.bootstrap, seed)
        comparisons = []
        if decided in results and both_classes:
            for other in (n for n in names if n != decided):
                a, b = np.asarray(self.scores[decided]), np.asarray(self.scores[other])
                if np.isfinite(a).all() and np.isfinite(b).all():
                    for test in compare_aurocs(a, b, y, self.bootstrap, seed):
                        comparisons.append({"a": decided, "b": other, **test})
        # from PixelMetrics, if attached: pixel_auroc, pixel_ap, pixel_best_dice(_threshold), pixel_aupro
        pixel = {
            key[len("pixel_") :]: float(value)
            for key, value in engine.state.metrics.items()
            if key.startswith("pixel_") and np.isfinite(float(value))
        }
        record = {
            "title": self.title,
            "results": results,
            **({"pixel_auroc": pixel["auroc"]} if "auroc" in pixel else {}),
            **({"pixel": pixel} if pixel else {}),
            "threshold": threshold,
            "decided_score": decided,
            **({"served_map": served} if served else {}),
            **({"calibration": calibration} if normals.size else {}),
            **({"operating_points": operating_points} if operating_points else {}),
            **({"comparisons": comparisons} if comparisons else {}),
            "data": {"n_images": int(y.size), "n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum())},
            **self.extra,
            **{k: json.loads(p.read_text()) for k, p in self.include.items() if p.is_file()},
            "provenance": provenance(self.seed),
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record, self.output_dir / "metrics.json")
        lines = [f"### {self.title}", "", "| score | AUROC (%) | AP (%) | F1-max (%) |", "|---|---|---|---|"]
        for name, row in results.items():
            cells = [_cell(row, metric) for metric in ("auroc", "ap", "f1_max")]
            lines.append(f"| {self.labels.get(name, name)} | " + " | ".join(cells) + " |")
        if decided in results and "sensitivity" in results[decided]:
            row = results[decided]
            lines += [
                "",
                f"At the stored threshold ({threshold:.6g}, from validation normals), "
                f"{self.labels.get(decided, decided)}: sensitivity {_cell(row, 'sensitivity')} %, "
                f"specificity {_cell(row, 'specificity')} %, PPV {_cell(row, 'ppv')} %, NPV {_cell(row, 'npv')} % "
                "(PPV and NPV at this test set's prevalence).",
            ]
        if any("auroc_ci95" in row for row in results.values()):
            lines += [
                "",
                f"[low, high]: stratified bootstrap 95% intervals ({self.bootstrap} resamples, seed {self.seed}).",
            ]
        lines += _operating_point_lines(operating_points, calibration, self.labels.get(str(decided), decided))
        lines += _comparison_lines(comparisons, self.labels)
        lines += _pixel_lines(pixel)
        lines += [
            "",
            f"{record['data']['n_normal']} normal and {record['data']['n_anomalous']} anomalous images; "
            f"seed {self.seed}; threshold {threshold:.6g}."
            + (f" The model serves the `{served}` map." if served else ""),
        ]
        table = "\n".join(lines) + "\n"
        atomic_write_text(table, self.output_dir / "results.md")
        if both_classes and names:
            display = {self.labels.get(n, n): np.asarray(self.scores[n]) for n in names}
            plot_roc_curves(display, y, self.output_dir / "roc.png", title=self.title)
            plot_score_histograms(display, y, self.output_dir / "score_histograms.png")
        logging.getLogger("medad_monai").info(f"evaluation report in {self.output_dir}:\n{table}")


def _operating_point_lines(points: Sequence[Mapping[str, Any]], calibration: Mapping[str, Any], name: Any) -> list[str]:
    """Markdown table of the target-specificity thresholds and the test figures there."""
    if not points:
        return []
    lines = [
        "",
        f"Thresholds for a target specificity of {name}, from the {calibration['n']} validation normals the model was "
        "calibrated on (interval: bootstrap over those normals), and the test figures there:",
        "",
        "| target specificity (%) | threshold | test sensitivity (%) | test specificity (%) |",
        "|---|---|---|---|",
    ]
    for p in points:
        low, high = p["threshold_ci95"]
        lines.append(
            f"| {100 * p['target_specificity']:.0f} | {p['threshold']:.4g} [{low:.4g}, {high:.4g}] | "
            f"{_cell(p, 'sensitivity')} | {_cell(p, 'specificity')} |"
        )
    return lines


def _comparison_lines(comparisons: Sequence[Mapping[str, Any]], labels: Mapping[str, str]) -> list[str]:
    """Markdown table of the AUROC differences between the decided score and the others."""
    if not comparisons:
        return []
    lines = ["", "| AUROC difference (%) | value [95% CI] | p | test |", "|---|---|---|---|"]
    for c in comparisons:
        pair = f"{labels.get(c['a'], c['a'])} - {labels.get(c['b'], c['b'])}"
        interval = f"{100 * c['difference']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
        lines.append(f"| {pair} | {interval} | {c['p_value']:.3g} | {c['method']} |")
    return lines


def _pixel_lines(pixel: Mapping[str, float]) -> list[str]:
    """One sentence with the pixel metrics that exist."""
    parts = [f"AUROC {100 * pixel['auroc']:.1f}"] if "auroc" in pixel else []
    parts += [f"AP {100 * pixel['ap']:.1f}"] if "ap" in pixel else []
    if "best_dice" in pixel:
        at = f" (map >= {pixel['best_dice_threshold']:.4g})" if "best_dice_threshold" in pixel else ""
        parts.append(f"best Dice {100 * pixel['best_dice']:.1f}{at}")
    parts += [f"AUPRO up to 30% FPR {100 * pixel['aupro']:.1f}"] if "aupro" in pixel else []
    if not parts:
        return []
    return ["", "Pixel metrics of the map against the lesion masks (all test pixels, %): " + ", ".join(parts) + "."]


def _cell(row: Mapping[str, Any], metric: str) -> str:
    """``"83.8 [80.1, 87.0]"`` (percent, with the interval when there is one), or ``"n/a"``."""
    if metric not in row:
        return "n/a"
    text = f"{100 * row[metric]:.1f}"
    if f"{metric}_ci95" in row:
        low, high = row[f"{metric}_ci95"]
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def _decided_score(network: nn.Module | None, served: str | None, names: Sequence[str]) -> str | None:
    """The score name the model's decisions use: the map it serves (DDAD's ``refined`` is R_dual with a UDM, else
    R_intra), else ``score``; ``None`` when the report has neither."""
    if served == "refined":
        served = "r_dual" if bool(getattr(network, "has_udm", False)) else "r_intra"
    if served in names:
        return served
    return "score" if "score" in names else None
