"""Pictures for people: ROC curves, normal-vs-anomalous score histograms and anomaly-map overlays (PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers, MONAI Deploy
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medad_monai.io import atomic_savefig  # noqa: E402
from medad_monai.metrics.ranking import roc_auc, roc_curve  # noqa: E402

__all__ = ["overlay_rgb", "plot_grouped_bars", "plot_roc_curves", "plot_score_histograms"]


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    try:
        return atomic_savefig(lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"), path)
    finally:
        plt.close(fig)


def plot_roc_curves(
    scores: Mapping[str, np.ndarray], labels: np.ndarray, path: str | os.PathLike, title: str = "ROC"
) -> Path:
    """One ROC curve per score, AUROC in the legend."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(s, labels)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc(s, labels):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_score_histograms(
    scores: Mapping[str, np.ndarray], labels: np.ndarray, path: str | os.PathLike, threshold: float | None = None
) -> Path:
    """Normal vs anomalous histograms of each score (min-max normalised per score, as the DDAD paper's figures)."""
    names = list(scores)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    labels = np.asarray(labels)
    for ax, name in zip(axes[0], names):
        s = np.asarray(scores[name], dtype=np.float64)
        lo, hi = float(s.min()), float(s.max())
        z = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
        bins = np.linspace(0, 1, 31)
        ax.hist(z[labels == 0], bins=bins, alpha=0.55, color="tab:blue", label="normal", density=True)
        ax.hist(z[labels == 1], bins=bins, alpha=0.55, color="tab:red", label="anomalous", density=True)
        if threshold is not None and name == names[-1] and hi > lo and np.isfinite(threshold):
            ax.axvline((threshold - lo) / (hi - lo), color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set(xlabel=f"{name} (normalised)", ylabel="density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_grouped_bars(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float] | None]]],
    groups: Sequence[str],
    path: str | os.PathLike,
    ylabel: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One panel per entry of ``panels`` (titled by its key, stacked vertically), each a grouped bar chart: for each
    of ``groups`` one bar per series, ``{series: (heights, errors or None)}``. Errors draw error bars; a NaN
    height (e.g. a failed run) leaves its bar out and writes "n/a" in its place."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.4 * len(groups)), 3.2 * len(panels)), squeeze=False)
    x = np.arange(len(groups))
    for ax, (title, series) in zip(axes[:, 0], panels.items()):
        width = 0.8 / max(1, len(series))
        for i, (name, (heights, errors)) in enumerate(series.items()):
            offset = (i - (len(series) - 1) / 2) * width
            yerr = None if errors is None else np.nan_to_num(np.asarray(errors, dtype=np.float64))
            heights = np.asarray(heights, dtype=np.float64)
            ax.bar(x + offset, heights, width, yerr=yerr, capsize=3, label=name)
            for position in x[np.isnan(heights)] + offset:  # a missing bar says so
                ax.annotate("n/a", (position, 0), xytext=(0, 3), textcoords="offset points", ha="center", rotation=90)
        ax.set_xticks(x, list(groups))
        ax.set(title=title, ylabel=ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, vmax: float | None = None) -> np.ndarray:
    """Blend a heatmap (jet colour map) over a grayscale image; both ``(H, W)``; returns uint8 ``(H, W, 3)``."""
    img = np.asarray(image, dtype=np.float64)
    img = (img - img.min()) / (np.ptp(img) or 1.0)
    hm = np.asarray(heatmap, dtype=np.float64)
    top = vmax if vmax is not None and vmax > 0 else (hm.max() or 1.0)
    colours = plt.get_cmap("jet")(np.clip(hm / top, 0, 1))[..., :3]
    out = (1 - alpha) * img[..., None] + alpha * colours
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
