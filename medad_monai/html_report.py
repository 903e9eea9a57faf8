"""The visual report of an evaluation (``medad-monai report RUN_DIR``): one self-contained HTML page.

It reads what a bundle's evaluation wrote into its output folder (``metrics.json`` from
:class:`~medad_monai.handlers.report.EvaluationReport`, ``image_scores.csv`` from
:class:`~medad_monai.handlers.score_writer.ImageScoreWriter` and, when the
:class:`~medad_monai.handlers.gallery.ErrorGallery` ran, ``gallery/``) and writes ``report.html``: the metrics with
their 95% intervals, the operating points, the score comparisons, the pixel metrics, ROC and precision-recall curves
with stratified bootstrap bands (:func:`~medad_monai.metrics.bootstrap.roc_band`,
:func:`~medad_monai.metrics.bootstrap.pr_band`), score histograms with the threshold, the threshold's calibration on
validation normals against the test normals, the galleries of the most confident errors and the provenance.

Every plot is a PNG inside the page (a ``data:`` URI) and the style sheet is inline: the file can be mailed, archived
or opened offline, and it loads nothing from a network (there is no script). A section whose record is missing (an
evaluation folder written before that record existed) says so in one line and the others are still drawn.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

from medad_monai import __version__  # noqa: E402
from medad_monai.io import atomic_write_text  # noqa: E402
from medad_monai.metrics.bootstrap import pr_band, roc_band  # noqa: E402
from medad_monai.metrics.ranking import roc_curve  # noqa: E402

__all__ = ["REPORT_SECTIONS", "ImageScores", "decided_score", "read_image_scores", "write_html_report"]

# the page's sections, in order: (anchor, heading)
REPORT_SECTIONS = (
    ("summary", "Summary"),
    ("metrics", "Image-level metrics"),
    ("operating-points", "Operating points"),
    ("comparisons", "Score comparisons"),
    ("pixel", "Pixel-level metrics"),
    ("curves", "ROC and precision-recall curves"),
    ("histograms", "Score histograms"),
    ("calibration", "Threshold calibration"),
    ("gallery", "Most confident errors"),
    ("provenance", "Provenance"),
)

# the gallery's kinds (handlers.gallery.GALLERY_KINDS, a layer above this module, so restated) with their headings
_GALLERY_KINDS = {
    "false_positive": "False positives: normal images above the threshold (highest score first)",
    "hardest_normal": "Hardest normals: the highest-scored normal images that stay below the threshold",
    "false_negative": "False negatives: anomalous images at or below the threshold (lowest score first)",
    "hardest_anomalous": "Hardest anomalies: the lowest-scored anomalous images that are still caught",
}

# columns of image_scores.csv that are not scores
_NOT_SCORES = {"filename", "label", "error", "decision", "threshold"}

# top-level keys of metrics.json that a section renders (the others are listed as recorded options)
_RENDERED = {
    "title",
    "results",
    "threshold",
    "decided_score",
    "served_map",
    "calibration",
    "operating_points",
    "comparisons",
    "pixel",
    "pixel_auroc",
    "data",
    "provenance",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
nav a { margin-right: 1em; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.decided td { font-weight: 600; }
.note { color: #666; font-style: italic; }
.plot { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
.gallery figure { margin: 0; width: 330px; border: 1px solid #ddd; padding: 0.4em; }
.gallery img { width: 100%; height: auto; image-rendering: pixelated; }
figcaption { font-size: 0.8em; word-break: break-all; }
pre { background: #f7f7f9; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


@dataclass
class ImageScores:
    """``image_scores.csv``: file names, 0/1 labels and each score column (NaN where a cell is empty)."""

    files: list[str]
    labels: np.ndarray
    scores: dict[str, np.ndarray]

    def finite(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The scores ``name`` has a value for, and their labels."""
        s = self.scores[name]
        keep = np.isfinite(s)
        return s[keep], self.labels[keep]


def read_image_scores(path: str | os.PathLike, score_names: Iterable[str] | None = None) -> ImageScores:
    """Read an evaluation's ``image_scores.csv``: the rows with a 0/1 label and no error, and the score columns
    (``score_names`` where given and present, else every column but the file name, label, error, decision and
    threshold)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if "label" not in header:
        raise ValueError(f"{path} has no 'label' column (columns: {header})")
    wanted = [n for n in (score_names or []) if n in header]
    names = wanted or [c for c in header if c not in _NOT_SCORES]
    files, labels, values = [], [], {n: [] for n in names}
    for row in rows:
        label = _float(row.get("label"))
        if (row.get("error") or "").strip() or label not in (0.0, 1.0):
            continue  # a failed input, or an image without a class: neither has a place in the curves
        files.append(row.get("filename", ""))
        labels.append(int(label))
        for n in names:
            try:
                values[n].append(float(row[n]))
            except (TypeError, ValueError):
                values[n].append(math.nan)
    scores = {n: np.asarray(v, dtype=np.float64) for n, v in values.items()}
    return ImageScores(
        files, np.asarray(labels, dtype=np.int64), {n: s for n, s in scores.items() if np.isfinite(s).any()}
    )


def decided_score(metrics: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """The score the stored threshold applies to: ``decided_score`` where recorded, else (older folders) the map
    the model serves (DDAD's ``refined``: R_dual when the evaluation has it, else R_intra), else ``score``."""
    known = set(names)
    recorded = metrics.get("decided_score")
    if recorded and recorded in known:
        return str(recorded)
    served = metrics.get("served_map")
    if served == "refined":
        served = "r_dual" if "r_dual" in known else "r_intra"
    if served in known:
        return str(served)
    return "score" if "score" in known else None


def write_html_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    resamples: int = 1000,
    seed: int | None = None,
) -> Path:
    """Write the report of the evaluation in ``run_dir`` to ``out`` (default ``run_dir/report.html``), atomically.

    Args:
        run_dir: an evaluation output folder (the bundle's ``eval/``) with ``metrics.json`` and ``image_scores.csv``.
        out: the HTML file to write.
        resamples: stratified bootstrap resamples of the curves' bands (0: no bands).
        seed: seed of the bands' resamples (default: the run's seed, else 0).

    Raises:
        FileNotFoundError: ``run_dir`` or one of its two required files is missing (the message names them).
        ValueError: ``metrics.json`` is not JSON, ``image_scores.csv`` has no label column, or ``resamples < 0``.
    """
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0 (0: curves without bands), got {resamples}")
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: give the evaluation's output folder (the bundle's eval/)")
    missing = [name for name in ("metrics.json", "image_scores.csv") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no {' and no '.join(missing)}: not an evaluation output folder (run the bundle's "
            "`evaluating` first; it writes both)"
        )
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'metrics.json'} is not valid JSON: {err}") from err
    table = read_image_scores(folder / "image_scores.csv", metrics.get("results") or None)
    if seed is None:
        seed = int((metrics.get("provenance") or {}).get("seed") or 0)
    page = _Page(folder, metrics, table, resamples, seed)
    dest = Path(out) if out is not None else folder / "report.html"
    return atomic_write_text(page.render(), dest)


class _Page:
    """The sections of one report, each rendered from the records it needs."""

    def __init__(self, folder: Path, metrics: dict[str, Any], table: ImageScores, resamples: int, seed: int) -> None:
        self.folder, self.metrics, self.table = folder, metrics, table
        self.resamples, self.seed = int(resamples), int(seed)
        self.results: dict[str, dict[str, Any]] = dict(metrics.get("results") or {})
        self.names = list(self.results) + [n for n in table.scores if n not in self.results]
        self.decided = decided_score(metrics, self.names)
        self.threshold = _float(metrics.get("threshold"))
        self.points: list[dict[str, Any]] = list(metrics.get("operating_points") or [])

    def render(self) -> str:
        title = str(self.metrics.get("title") or "Evaluation report")
        sections = [
            self.summary(),
            self.metric_table(),
            self.operating_points(),
            self.comparisons(),
            self.pixel(),
            self.curves(),
            self.histograms(),
            self.calibration(),
            self.gallery(),
            self.provenance(),
        ]
        nav = " ".join(f'<a href="#{anchor}">{_e(heading)}</a>' for anchor, heading in REPORT_SECTIONS)
        body = "\n".join(
            f'<section id="{anchor}">\n<h2>{_e(heading)}</h2>\n{content}\n</section>'
            for (anchor, heading), content in zip(REPORT_SECTIONS, sections)
        )
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n<nav>{nav}</nav>\n{body}\n"
            f'<p class="note">Written by medad-monai {_e(__version__)} from {_e(str(self.folder))}.</p>\n'
            "</body>\n</html>\n"
        )

    # -- sections ---------------------------------------------------------------------------------------------------

    def summary(self) -> str:
        data = self.metrics.get("data") or {}
        n_normal = data.get("n_normal", int((self.table.labels == 0).sum()))
        n_anomalous = data.get("n_anomalous", int((self.table.labels == 1).sum()))
        lines = [f"{n_normal} normal and {n_anomalous} anomalous test images."]
        if self.decided is not None:
            row = self.results.get(self.decided, {})
            lines.append(
                f"The model decides on <b>{_e(self.decided)}</b>: image AUROC {_e(_ci(row, 'auroc'))} %, "
                f"AP {_e(_ci(row, 'ap'))} % (95% intervals in brackets)."
            )
            if math.isfinite(self.threshold):
                lines.append(
                    f"At its stored threshold {_e(_num(self.threshold))} (calibrated on validation normals): "
                    f"sensitivity {_e(_ci(row, 'sensitivity'))} %, specificity {_e(_ci(row, 'specificity'))} %."
                )
            else:
                lines.append("The model has no calibrated threshold (NaN): it makes no decisions.")
        else:
            lines.append("The evaluation names no score the model decides on: no threshold figures.")
        if "served_map" in self.metrics:
            lines.append(f"It serves the <code>{_e(self.metrics['served_map'])}</code> map.")
        return "".join(f"<p>{line}</p>\n" for line in lines)

    def metric_table(self) -> str:
        if not self.results:
            return _note("metrics.json records no image-level results.")
        rows = []
        for name, row in self.results.items():
            mark = " (decides)" if name == self.decided else ""
            cells = [name + mark] + [_ci(row, m) for m in ("auroc", "ap", "f1_max")]
            rows.append((cells, "decided" if mark else ""))
        out = _table(["score", "AUROC (%)", "AP (%)", "F1-max (%)"], rows)
        row = self.results.get(str(self.decided), {})
        if "sensitivity" in row:
            cells = [_ci(row, m) for m in ("sensitivity", "specificity", "ppv", "npv")]
            out += f"<p>Decisions of {_e(self.decided)} at the stored threshold {_e(_num(self.threshold))}:</p>\n"
            out += _table(["sensitivity (%)", "specificity (%)", "PPV (%)", "NPV (%)"], [(cells, "")])
            out += _note("PPV and NPV at this test set's prevalence.")
        out += _note("[low, high]: stratified bootstrap 95% intervals over the test images.")
        return out

    def operating_points(self) -> str:
        row = self.results.get(str(self.decided), {})
        rows = []
        if "sensitivity" in row:
            cells = ["stored", _num(self.threshold), _ci(row, "sensitivity"), _ci(row, "specificity")]
            rows.append((cells, "decided"))
        for p in self.points:
            low, high = (p.get("threshold_ci95") or [math.nan, math.nan])[:2]
            threshold = f"{_num(p.get('threshold'))} [{_num(low)}, {_num(high)}]"
            target = f"{100 * _float(p.get('target_specificity')):.0f} %"
            rows.append(([target, threshold, _ci(p, "sensitivity"), _ci(p, "specificity")], ""))
        if not rows:
            return _note("No operating point recorded (no decided score with a threshold).")
        out = _table(["target specificity", "threshold", "test sensitivity (%)", "test specificity (%)"], rows)
        if not self.points:
            out += _note("Target-specificity thresholds not recorded (an evaluation written before they were).")
        else:
            out += _note(
                "Each target's threshold is a quantile of the validation normals' scores (interval: bootstrap over "
                "those normals); the sensitivity and specificity are the test set's at that threshold."
            )
        return out

    def comparisons(self) -> str:
        comparisons = self.metrics.get("comparisons")
        if not comparisons:
            return _note("No score comparisons recorded (one score, or an evaluation written before they were).")
        rows = []
        for c in comparisons:
            interval = f"{100 * _float(c.get('difference')):+.1f} [{100 * _float(c.get('low')):+.1f}, "
            interval += f"{100 * _float(c.get('high')):+.1f}]"
            cells = [f"{c.get('a')} - {c.get('b')}", str(c.get("metric", "auroc")), interval]
            rows.append((cells + [_num(c.get("p_value"), 3), str(c.get("method", ""))], ""))
        return _table(["pair", "metric", "difference (points) [95% CI]", "p", "test"], rows)

    def pixel(self) -> str:
        pixel = dict(self.metrics.get("pixel") or {})
        if not pixel and "pixel_auroc" in self.metrics:
            pixel = {"auroc": self.metrics["pixel_auroc"]}
        if not pixel:
            return _note("No pixel metrics recorded (no lesion masks, or no pixel handler in the evaluation).")
        labels = {"auroc": "pixel AUROC (%)", "ap": "pixel AP (%)", "best_dice": "best Dice (%)", "aupro": "AUPRO (%)"}
        rows = [([labels[k], f"{100 * _float(pixel[k]):.1f}"], "") for k in labels if k in pixel]
        if "best_dice_threshold" in pixel:
            rows.append((["best Dice at map >=", _num(pixel["best_dice_threshold"])], ""))
        out = _table(["metric", "value"], rows)
        if "aupro" not in pixel and "ap" not in pixel:
            out += _note("Only the pixel AUROC was recorded (an evaluation written before the other pixel metrics).")
        return out

    def curves(self) -> str:
        names = [n for n in self.names if n in self.table.scores and _both_classes(self.table.finite(n)[1])]
        if not names:
            return _note("image_scores.csv has no score with both normal and anomalous images: no curves.")
        fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
        prevalence = None
        for i, name in enumerate(names):
            s, y = self.table.finite(name)
            colour = f"C{i % 10}"
            grid = np.linspace(0, 1, 201)
            # without resamples the bands are the curve itself (nothing shaded)
            roc = roc_band(s, y, max(1, self.resamples), self.seed, grid)
            pr = pr_band(s, y, max(1, self.resamples), self.seed, grid)
            fpr, tpr, _ = roc_curve(s, y)
            row = self.results.get(name, {})
            width = 2.2 if name == self.decided else 1.3
            roc_ax.plot(fpr, tpr, color=colour, linewidth=width, label=f"{name} (AUROC {_ci(row, 'auroc')})")
            pr_ax.plot(grid, pr["value"], color=colour, linewidth=width, label=f"{name} (AP {_ci(row, 'ap')})")
            if self.resamples > 0:
                roc_ax.fill_between(grid, roc["low"], roc["high"], color=colour, alpha=0.18, linewidth=0)
                pr_ax.fill_between(grid, pr["low"], pr["high"], color=colour, alpha=0.18, linewidth=0)
            prevalence = float(y.mean())
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
        if prevalence is not None:
            pr_ax.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label=f"chance ({prevalence:.2f})")
        pr_ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall")
        for ax in (roc_ax, pr_ax):
            ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
            ax.grid(alpha=0.25)
        fig.tight_layout()
        bands = (
            f"Shaded: pointwise 95% bands of {self.resamples} stratified bootstrap resamples (seed {self.seed}); "
            "true positive rate at each false positive rate, precision at each recall."
            if self.resamples > 0
            else "No bands (0 resamples)."
        )
        return _figure(fig, "ROC and precision-recall curves") + _note(
            bands + " Legend values: the evaluation's intervals."
        )

    def histograms(self) -> str:
        names = [n for n in self.names if n in self.table.scores]
        if not names:
            return _note("image_scores.csv has no score column: no histograms.")
        if self.decided in names:  # the decided score first: the only one the threshold applies to
            names.remove(self.decided)
            names.insert(0, self.decided)
        columns = min(3, len(names))
        rows = math.ceil(len(names) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
        for ax, name in zip(axes.ravel(), names):
            s, y = self.table.finite(name)
            lines = self._thresholds() if name == self.decided else []
            marks = [t for t, _, _ in lines if math.isfinite(t)]
            lo, hi = float(min([s.min(), *marks])), float(max([s.max(), *marks]))
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
            for cls, colour, label in ((0, "tab:blue", "normal"), (1, "tab:red", "anomalous")):
                if (y == cls).any():
                    ax.hist(s[y == cls], bins=bins, alpha=0.55, color=colour, density=True, label=label)
            for t, style, label in lines:
                if math.isfinite(t):
                    ax.axvline(t, color="black", linestyle=style, linewidth=1.2, label=label)
            ax.set(xlabel=name + (" (decides)" if name == self.decided else ""), ylabel="density")
            ax.xaxis.set_major_locator(MaxNLocator(5))  # long score values would run into each other
            ax.legend(fontsize=7)
        for ax in axes.ravel()[len(names) :]:
            ax.set_visible(False)
        fig.tight_layout()
        note = "Test images, on each score's own scale."
        if self.decided in names:
            note += f" The threshold lines apply to {self.decided} only."
        if self.decided in names and not math.isfinite(self.threshold):
            note += " No stored threshold (NaN)."
        return _figure(fig, "Score histograms of normal and anomalous test images") + _note(note)

    def calibration(self) -> str:
        record = self.metrics.get("calibration") or {}
        if not isinstance(record, Mapping):  # D²4FAD's bundle records its calibration mode under the same key
            return _note(f"calibration: {record!r} (no validation-normal scores recorded): not shown.")
        normals = np.asarray(record.get("scores") or [], dtype=np.float64)
        normals = normals[np.isfinite(normals)]
        if normals.size == 0:
            return _note("No calibration record (validation-normal scores) in metrics.json: not shown.")
        if self.decided is None or self.decided not in self.table.scores:
            return _note("The decided score is not in image_scores.csv: nothing to compare the calibration with.")
        s, y = self.table.finite(self.decided)
        test_normals = s[y == 0]
        threshold = _float(record.get("threshold", self.threshold))
        quantile = record.get("quantile")
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        for values, colour, label in (
            (normals, "tab:green", f"validation normals (n={normals.size})"),
            (test_normals, "tab:blue", f"test normals (n={test_normals.size})"),
        ):
            if values.size:
                x = np.sort(values)
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", color=colour, label=label)
        for t, style, label in self._thresholds(calibration_threshold=threshold):
            if math.isfinite(t):
                ax.axvline(t, color="black", linestyle=style, linewidth=1.2, label=label)
        if quantile is not None and math.isfinite(_float(quantile)):
            ax.axhline(_float(quantile), color="grey", linestyle=":", linewidth=1, label=f"quantile {quantile}")
        ax.set(xlabel=f"image score ({self.decided})", ylabel="fraction of images at or below", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.25)
        fig.tight_layout()

        def below(values: np.ndarray) -> str:
            return _pct(np.mean(values <= threshold)) if values.size and math.isfinite(threshold) else "n/a"

        rows = [
            (["validation normals", str(normals.size), below(normals)], ""),
            (["test normals", str(test_normals.size), below(test_normals)], ""),
        ]
        out = _figure(fig, "Calibration: validation-normal and test-normal score distributions") + _table(
            ["normals", "n", f"at or below the threshold {_num(threshold)} (%)"], rows
        )
        if test_normals.size:
            ks = ks_2samp(normals, test_normals)
            out += _note(
                f"Quantile {quantile if quantile is not None else 'not recorded'}. Largest gap between the two "
                f"distributions (Kolmogorov-Smirnov): {ks.statistic:.3f}, p = {ks.pvalue:.3g}; a small p says the "
                "test normals do not score like the validation normals, so the threshold's specificity may not hold."
            )
        return out

    def gallery(self) -> str:
        index = self.folder / "gallery" / "gallery.json"
        if not index.is_file():
            return _note("No gallery/ (the evaluation ran without the ErrorGallery handler).")
        try:
            records = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            return _note(f"gallery/gallery.json is not valid JSON ({err}): not shown.")
        if isinstance(records, dict):
            records = records.get("items", [])
        if not records:
            return _note("The gallery is empty (no image with a 0/1 label and a finite score).")
        kinds = list(_GALLERY_KINDS) + sorted({str(r.get("kind")) for r in records} - set(_GALLERY_KINDS))
        parts = []
        for kind in kinds:
            group = [r for r in records if r.get("kind") == kind]
            if not group:
                continue
            parts.append(f'<h3>{_e(_GALLERY_KINDS.get(kind, kind))}</h3>\n<div class="gallery">')
            for r in group:
                parts.append(self._gallery_item(r))
            parts.append("</div>")
        colour_max = _float(records[0].get("colour_max"))
        parts.append(
            _note(
                "Left: the image as the model saw it (first channel); right: its anomaly map over it, on one colour "
                f"scale for the whole gallery (0 to {_num(colour_max)})."
            )
        )
        if not any(r.get("kind") in ("false_positive", "false_negative") for r in records):
            parts.append(_note("No false positive or false negative among the kept images."))
        return "\n".join(parts)

    def provenance(self) -> str:
        prov = dict(self.metrics.get("provenance") or {})
        parts = []
        if prov:
            basics = [([k, _plain(prov[k])], "") for k in ("seed", "python", "platform", "cuda") if k in prov]
            parts.append(_table(["recorded", "value"], basics))
            versions = prov.get("versions") or {}
            if versions:
                parts.append("<h3>Package versions</h3>\n" + _table(["package", "version"], _pairs(versions)))
            rest = {k: v for k, v in prov.items() if k not in ("seed", "python", "platform", "cuda", "versions")}
            if rest:
                parts.append(_json_block("Other provenance", rest))
        else:
            parts.append(_note("No provenance record in metrics.json."))
        data = dict(self.metrics.get("data") or {})
        for key in ("dataset_dir", "target", "sources", "num_support", "image_size"):
            if key in self.metrics:
                data[key] = self.metrics[key]
        if data:
            parts.append("<h3>Data</h3>\n" + _table(["", "value"], _pairs(data)))
        weights = {k: v for k, v in self.metrics.items() if "weight" in k.lower()}
        weights.update(_find_weights(self.metrics.get("training")))
        if weights:
            parts.append("<h3>Weights</h3>\n" + _table(["", "value"], _pairs(weights)))
        else:
            parts.append(_note("No weights recorded in metrics.json (e.g. teacher_weights)."))
        shown = _RENDERED | {"dataset_dir", "target", "sources", "num_support", "image_size"} | set(weights)
        options = {k: v for k, v in self.metrics.items() if k not in shown}
        if options:
            parts.append(_json_block("Recorded options and reports", options))
        return "\n".join(parts)

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _thresholds(self, calibration_threshold: float | None = None) -> list[tuple[float, Any, str]]:
        """The thresholds to mark: the stored one (and the calibration's when it differs) and each target's."""
        marks = [(self.threshold, "--", f"stored threshold {_num(self.threshold)}")]
        if calibration_threshold is not None and not _same(calibration_threshold, self.threshold):
            marks.append((calibration_threshold, "-", f"calibration threshold {_num(calibration_threshold)}"))
        styles = [":", "-.", (0, (1, 4)), (0, (3, 2, 1, 2, 1, 2))]  # one line style per target, told apart
        for i, p in enumerate(self.points):
            target = _float(p.get("target_specificity"))
            style = styles[i % len(styles)]
            marks.append((_float(p.get("threshold")), style, f"specificity {100 * target:.0f} % target"))
        return marks

    def _gallery_item(self, record: Mapping[str, Any]) -> str:
        name = Path(str(record.get("png", ""))).name  # the gallery's own folder only, whatever the JSON says
        path = self.folder / "gallery" / name
        file = str(record.get("file", ""))
        caption = (
            f"<b>{_e(Path(file).name)}</b><br>label {_e(str(record.get('label')))}, score "
            f"{_e(_num(record.get('score')))}, threshold {_e(_num(record.get('threshold')))}"
        )
        data = path.read_bytes() if name and path.is_file() else b""
        if not data.startswith(b"\x89PNG"):
            return f'<figure><p class="note">overlay {_e(name)} missing</p><figcaption>{caption}</figcaption></figure>'
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        alt = f"{record.get('kind')}: {Path(file).name}"
        return (
            f'<figure><img src="{uri}" alt="{_e(alt)}" title="{_e(file)}"><figcaption>{caption}</figcaption></figure>'
        )


def _e(text: Any) -> str:
    """Text for HTML: every value from the run's files is escaped (quotes too, for attributes)."""
    return html.escape(str(text), quote=True)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _num(value: Any, digits: int = 6) -> str:
    v = _float(value)
    return f"{v:.{digits}g}" if math.isfinite(v) else "n/a"


def _pct(value: Any) -> str:
    v = _float(value)
    return f"{100 * v:.1f}" if math.isfinite(v) else "n/a"


def _ci(row: Mapping[str, Any], metric: str) -> str:
    """``"83.8 [80.1, 87.0]"`` (percent, with the interval when recorded), or ``"n/a"``."""
    if metric not in row:
        return "n/a"
    text = _pct(row[metric])
    interval = row.get(f"{metric}_ci95")
    if isinstance(interval, Sequence) and len(interval) == 2:
        text += f" [{_pct(interval[0])}, {_pct(interval[1])}]"
    return text


def _both_classes(labels: np.ndarray) -> bool:
    return bool((labels == 0).any() and (labels == 1).any())


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>\n'


def _table(headers: Sequence[str], rows: Sequence[tuple[Sequence[str], str]]) -> str:
    """An HTML table; each row is ``(cells, css class)``; cells that start with a number are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for cells, cls in rows:
        tds = "".join(
            f'<td class="num">{_e(c)}</td>' if c[:1].isdigit() or (c and c[0] in "+-") else f"<td>{_e(c)}</td>"
            for c in map(str, cells)
        )
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>\n"


def _plain(value: Any) -> str:
    """A value for a table cell: scalars as they are, lists and mappings as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str) if isinstance(value, list | dict | tuple) else str(value)


def _pairs(mapping: Mapping[str, Any]) -> list[tuple[list[str], str]]:
    return [([str(k), _plain(v)], "") for k, v in mapping.items()]


def _json_block(title: str, value: Any, limit: int = 20000) -> str:
    """A collapsible block of pretty JSON (native ``<details>``: no script), cut at ``limit`` characters."""
    text = json.dumps(value, indent=2, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters in metrics.json)"
    return f"<details><summary>{_e(title)}</summary>\n<pre>{_e(text)}</pre>\n</details>\n"


def _find_weights(value: Any, prefix: str = "training") -> dict[str, Any]:
    """Entries of a nested record (the training report) whose key names weights, as ``a.b.key: value``."""
    found: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{prefix}.{key}"
            if "weight" in str(key).lower() and not isinstance(item, Mapping | list):
                found[path] = item
            else:
                found.update(_find_weights(item, path))
    return found


def _figure(fig: plt.Figure, alt: str) -> str:
    """A matplotlib figure as an inline PNG ``<img>`` (closed afterwards)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" src="{uri}" alt="{_e(alt)}">\n'
