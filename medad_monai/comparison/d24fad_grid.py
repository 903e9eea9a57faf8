"""Leave-one-dataset-out grid of the D²4FAD bundle: every target x every K, one results table.

The paper's main table (Dong et al., ICLR 2026; official ``main.py``, ``item_list`` x ``shot = [2, 4, 8]``)
reports image AUROC per target dataset and K, each target trained on the other datasets. :func:`run_grid` runs the
bundle's ``train.json`` then ``train.json + evaluate.json`` through MONAI's ``ConfigWorkflow`` for each cell
(sources = all datasets but the target) and writes ``results.md`` (rows = targets, columns = K, cells
"AUROC / AP" in %, a mean row) and ``results.csv`` (one row per cell).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from medad_monai.bundle import resolve_bundle_root
from medad_monai.data.episodes import dataset_name
from medad_monai.io import atomic_write_text
from medad_monai.provenance import provenance

__all__ = ["DEFAULT_DATASETS", "DEFAULT_SHOTS", "format_table", "parse_list", "run_grid"]

logger = logging.getLogger("medad_monai")

DEFAULT_DATASETS: tuple[str, ...] = (
    "demo:brain_mr",
    "demo:head_ct",
    "demo:chest_xray",
    "demo:fundus",
    "demo:abdomen_ct",
)
DEFAULT_SHOTS: tuple[int, ...] = (2, 4, 8)


def parse_list(value: str | int | Sequence[Any] | None) -> list[str] | None:
    """``"a,b"`` / ``("a", "b")`` / ``2`` -> ``["a", "b"]`` / ``["2"]``; ``None`` stays ``None`` (command line)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _workflow(config_file: list[str], meta_file: str, run_id: str, overrides: dict[str, Any]) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=config_file,
        meta_file=meta_file,
        logging_file=False,
        workflow_type="train",
        run_id=run_id,
        **overrides,
    )
    wf.initialize()
    return wf


def format_table(rows: list[dict[str, Any]], targets: list[str], shots: list[int], title: str) -> str:
    """Markdown table laid out as the paper's: rows = targets (+ mean), columns = K, cells ``AUROC / AP`` (%)."""
    cell = {(r["target"], int(r["k"])): r for r in rows}
    head = "| target | " + " | ".join(f"K={k} AUROC / AP (%)" for k in shots) + " |"
    lines = [f"### {title}", "", head, "|---|" + "---|" * len(shots)]
    for t in targets:
        vals = []
        for k in shots:
            r = cell.get((t, k))
            vals.append(f"{100 * r['auroc']:.1f} / {100 * r['ap']:.1f}" if r else "n/a")
        lines.append(f"| {t} | " + " | ".join(vals) + " |")
    means = []
    for k in shots:
        col = [cell[(t, k)] for t in targets if (t, k) in cell]
        if col:
            auroc = sum(r["auroc"] for r in col) / len(col)
            ap = sum(r["ap"] for r in col) / len(col)
            means.append(f"{100 * auroc:.1f} / {100 * ap:.1f}")
        else:
            means.append("n/a")
    lines.append("| mean | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def run_grid(
    out_dir: str | os.PathLike,
    datasets: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    shots: Sequence[int] | None = None,
    seed: int = 0,
    keep_models: bool = False,
    config_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train and evaluate the D²4FAD bundle for every (target, K); write ``results.md`` and ``results.csv``.

    Args:
        out_dir: folder of the table and of one bundle root per cell (``<target>_k<K>/``: ``models/``, ``eval/``).
        datasets: all datasets (folders in the ``train/good``, ``test/good``, ``test/bad`` layout or
            ``demo:<domain>``); default the five demo domains.
        targets: the held-out targets to run (default: every dataset); each trains on the others.
        shots: the K values (default 2, 4, 8 as in the paper).
        seed: the bundle's seed (support draws, initialisation).
        keep_models: keep each cell's ``model.pt`` (about 375 MB each); by default it is deleted after evaluation.
        config_dir: the bundle's ``configs/`` folder (default: the installed ``bundles/d24fad``).
        overrides: further bundle config overrides, e.g. ``epochs=70, image_size=128, batch_size=16``.

    Returns:
        One dict per cell: ``target``, ``k``, ``auroc``, ``ap``, ``seconds``.
    """
    datasets = list(datasets or DEFAULT_DATASETS)
    targets = list(targets or datasets)
    shots = [int(k) for k in (shots or DEFAULT_SHOTS)]
    unknown = [t for t in targets if t not in datasets]
    if unknown:
        raise ValueError(f"targets {unknown} are not among the datasets {datasets}")
    if len(datasets) < 2:
        raise ValueError("leave-one-dataset-out needs at least two datasets")
    configs = Path(config_dir) if config_dir else Path(resolve_bundle_root("d24fad")) / "configs"
    train, evaluate, meta = (str(configs / f) for f in ("train.json", "evaluate.json", "metadata.json"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    names = [dataset_name(t) for t in targets]
    for target, name in zip(targets, names):
        sources = [d for d in datasets if d != target]
        for k in shots:
            root = out / f"{name}_k{k}"
            cell_overrides = {
                **overrides,
                "bundle_root": str(root),
                "sources": sources,
                "target": target,
                "num_support": k,
                "seed": seed,
            }
            logger.info("D24FAD grid: target %s, K=%d, sources %s", target, k, ", ".join(sources))
            start = time.perf_counter()
            wf = _workflow([train], meta, "training", cell_overrides)
            wf.run()
            wf.finalize()
            wf = _workflow([train, evaluate], meta, "evaluating", cell_overrides)
            wf.run()
            wf.finalize()
            record = json.loads((root / "eval" / "metrics.json").read_text())
            result = record["results"]["score"]
            rows.append(
                {
                    "target": name,
                    "k": k,
                    "auroc": float(result["auroc"]),
                    "ap": float(result["ap"]),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            if not keep_models:
                (root / "models" / "model.pt").unlink(missing_ok=True)
            _write(out, rows, names, shots, seed, overrides)
    return rows


def _write(
    out: Path, rows: list[dict[str, Any]], names: list[str], shots: list[int], seed: int, overrides: dict[str, Any]
) -> None:
    """(Re)write the table after every cell, so an interrupted grid keeps its finished cells."""
    settings = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "bundle defaults"
    table = format_table(rows, names, shots, "D24FAD leave-one-dataset-out: image AUROC / AP (%)")
    table += f"\nSeed {seed}; {settings}; score = max of the anomaly map.\n"
    atomic_write_text(table, out / "results.md")
    lines = ["target,k,auroc,ap,seconds"] + [
        f"{r['target']},{r['k']},{r['auroc']:.6f},{r['ap']:.6f},{r['seconds']}" for r in rows
    ]
    atomic_write_text("\n".join(lines) + "\n", out / "results.csv")
    atomic_write_text(
        json.dumps({"rows": rows, "seed": seed, "overrides": overrides, "provenance": provenance(seed)}, indent=2),
        out / "results.json",
    )
