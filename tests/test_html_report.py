"""The HTML report of an evaluation folder (medad_monai.html_report, ``medad-monai report``): every section from a
complete record, short notes where an older folder lacks one, escaped text, clear errors, and the page in a real
headless browser (tests/browser.py: no console or page errors, no request leaves the file, every image loads, the
screenshot is not blank)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from browser import check_page
from ignite.engine import Engine
from monai.data import MetaTensor
from torch import nn

from medad_monai.cli import Commands
from medad_monai.handlers.gallery import ErrorGallery
from medad_monai.html_report import REPORT_SECTIONS, decided_score, read_image_scores, write_html_report

TITLE = 'PDD <script>alert("x")</script> & co'


class _Model(nn.Module):
    """A threshold and a reduction: all the gallery reads from a network whose maps are in the output."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.score_reduction = "max"
        self.register_buffer("threshold", torch.tensor(threshold))


def _scores(n_normal: int = 40, n_anomalous: int = 30, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    return y, {"score": rng.normal(size=y.size) + 1.2 * y, "other": rng.normal(size=y.size) + 0.4 * y}


def _write_csv(folder: Path, y: np.ndarray, scores: dict[str, np.ndarray], failed: int = 0) -> None:
    with (folder / "image_scores.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", *scores, "error"])
        for i, label in enumerate(y):
            writer.writerow([f"/data/test/img_{i:03d}.png", float(label), *(float(s[i]) for s in scores.values()), ""])
        for i in range(failed):  # inputs the run could not read: no label, no score
            writer.writerow([f"/data/test/broken_{i}.png", "", *([""] * len(scores)), "ImageReadError: cannot read"])


def _row(value: float, decided: bool = False) -> dict:
    row = {m: value for m in ("auroc", "ap", "f1_max")}
    row.update({f"{m}_ci95": [value - 0.05, min(1.0, value + 0.05)] for m in ("auroc", "ap", "f1_max")})
    if decided:
        for m, v in (("sensitivity", 0.7), ("specificity", 0.93), ("ppv", 0.88), ("npv", 0.8)):
            row.update({m: v, f"{m}_ci95": [v - 0.1, v + 0.05]})
    return row


def _full_metrics(y: np.ndarray, threshold: float) -> dict:
    rng = np.random.default_rng(1)
    return {
        "title": TITLE,
        "results": {"score": _row(0.81, decided=True), "other": _row(0.62)},
        "threshold": threshold,
        "decided_score": "score",
        "calibration": {"scores": rng.normal(size=25).tolist(), "threshold": threshold, "quantile": 0.95, "n": 25},
        "operating_points": [
            {
                "target_specificity": t,
                "threshold": thr,
                "threshold_ci95": [thr - 0.2, thr + 0.2],
                "sensitivity": sens,
                "sensitivity_ci95": [sens - 0.1, sens + 0.1],
                "specificity": spec,
                "specificity_ci95": [spec - 0.05, min(1.0, spec + 0.05)],
            }
            for t, thr, sens, spec in ((0.9, 1.2, 0.62, 0.9), (0.95, 1.6, 0.5, 0.96))
        ],
        "comparisons": [
            {"a": "score", "b": "other", "metric": "auroc", "difference": 0.19, "low": 0.05, "high": 0.31,
             "p_value": 0.004, "method": "paired bootstrap"},
            {"a": "score", "b": "other", "metric": "auroc", "difference": 0.19, "low": 0.06, "high": 0.32,
             "p_value": 0.003, "method": "DeLong"},
        ],  # fmt: skip
        "pixel": {"auroc": 0.91, "ap": 0.42, "best_dice": 0.37, "best_dice_threshold": 0.8, "aupro": 0.71},
        "pixel_auroc": 0.91,
        "data": {"n_images": int(y.size), "n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum())},
        "dataset_dir": "/data/<brain>",
        "image_size": 64,
        "teacher_weights": "imagenet",
        "training": {"epochs": 1, "vmamba_weights": "random", "checks": {"label_free": True}},
        "provenance": {"seed": 7, "versions": {"monai": "1.5.0", "torch": "2.14.1"}, "python": "3.11.2",
                       "platform": "Linux", "cuda": False},
    }  # fmt: skip


def _gallery(folder: Path, y: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """Run the real ErrorGallery over the test images (maps whose maximum is each image's score)."""
    items = []
    for i, (label, s) in enumerate(zip(y, scores)):
        image = MetaTensor(torch.rand(3, 16, 16), meta={"filename_or_obj": f"/data/test/img_{i:03d}.png"})
        amap = torch.zeros(1, 16, 16)
        amap[0, 4:8, 5:9] = abs(float(s))
        items.append({"image": image, "label": torch.tensor([int(label)]), "pred": amap})
    engine = Engine(lambda e, batch: batch)
    ErrorGallery(folder, _Model(threshold), k=3).attach(engine)
    engine.run([items[i : i + 8] for i in range(0, len(items), 8)], max_epochs=1)


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A complete evaluation folder: every record metrics.json can have, image scores and a gallery."""
    folder = tmp_path / "eval"
    folder.mkdir()
    y, scores = _scores()
    threshold = float(np.quantile(scores["score"][y == 0], 0.9))
    (folder / "metrics.json").write_text(json.dumps(_full_metrics(y, threshold)))
    _write_csv(folder, y, scores, failed=2)
    # positive scores so that the gallery's maps (|score|) keep the order of the scores
    _gallery(folder, y, scores["score"] - scores["score"].min() + 0.1, threshold - scores["score"].min() + 0.1)
    return folder


def test_every_section_is_rendered_and_the_page_loads_cleanly(run_dir, tmp_path):
    out = write_html_report(run_dir, resamples=200)
    assert out == run_dir / "report.html"
    page = out.read_text()
    for anchor, heading in REPORT_SECTIONS:
        assert f'<section id="{anchor}">' in page and f"<h2>{heading}</h2>" in page
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "/data/&lt;brain&gt;" in page  # every value from the run's files is escaped
    # nothing is fetched: every src and href is inline data or an anchor on the page
    assert all(v.startswith(("data:image/png;base64,", "#")) for v in re.findall(r'(?:src|href)="([^"]*)"', page))
    # no section fell back to its "not recorded" note
    for missing in ("not recorded", "No score comparisons", "No pixel metrics", "No calibration", "No gallery/"):
        assert missing not in page, missing
    assert "81.0 [76.0, 86.0]" in page  # AUROC with its interval, in percent
    assert "+19.0 [+5.0, +31.0]" in page and "DeLong" in page  # the comparison, in points
    assert "AUPRO (%)" in page and "71.0" in page
    assert "specificity 95 % target" not in page  # labels live in the plots, which are images
    gallery = json.loads((run_dir / "gallery" / "gallery.json").read_text())
    assert {r["kind"] for r in gallery} >= {"false_positive", "false_negative"}
    assert page.count("<figure>") == len(gallery)
    assert "imagenet" in page and "vmamba_weights" in page and "1.5.0" in page  # weights and versions

    check = check_page(out, screenshot=tmp_path / "report.png")
    plots = 3  # curves, histograms, calibration
    assert check.problems(min_images=plots + len(gallery)) == []
    assert len(check.images) == plots + len(gallery)
    for r in gallery:  # each gallery image is captioned with its file and score
        assert Path(r["file"]).name in check.text


def test_an_older_folder_gets_notes_for_what_it_lacks(tmp_path):
    """A DDAD folder from before the new records: served_map only, no calibration, operating points, comparisons,
    pixel metrics or gallery; the report still draws what it can."""
    y, scores = _scores()
    scores = {"r_intra": scores["other"], "r_dual": scores["score"]}
    _write_csv(tmp_path, y, scores)
    results = {"r_intra": _row(0.6), "r_dual": _row(0.8, decided=True)}
    record = {"title": "DDAD", "results": results, "threshold": 1.0, "served_map": "refined", "data": {}}
    record["calibration"] = "holdout"  # a bundle option under the record's key (D²4FAD's extra)
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    out = write_html_report(tmp_path, tmp_path / "other" / "page.html", resamples=0)
    page = out.read_text()
    assert "No bands (0 resamples)" in page
    assert "The model decides on <b>r_dual</b>" in page
    for note in (
        "Target-specificity thresholds not recorded",
        "No score comparisons recorded",
        "No pixel metrics recorded",
        "calibration: &#x27;holdout&#x27; (no validation-normal scores recorded)",
        "No gallery/",
        "No provenance record",
    ):
        assert note in page, note
    assert page.count('class="plot"') == 2  # curves and histograms still drawn


def test_decided_score_falls_back_like_the_evaluation():
    assert decided_score({"decided_score": "inter"}, ["inter", "score"]) == "inter"
    assert decided_score({"served_map": "refined"}, ["r_intra", "r_dual"]) == "r_dual"
    assert decided_score({"served_map": "refined"}, ["rec", "r_intra"]) == "r_intra"
    assert decided_score({"served_map": "intra"}, ["intra", "score"]) == "intra"
    assert decided_score({}, ["score"]) == "score"
    assert decided_score({}, ["rec"]) is None


def test_image_scores_skip_failed_rows_and_unlabelled_images(tmp_path):
    y, scores = _scores(5, 4)
    _write_csv(tmp_path, y, scores, failed=3)
    table = read_image_scores(tmp_path / "image_scores.csv", ["score", "missing"])
    assert list(table.scores) == ["score"] and table.labels.tolist() == y.tolist()
    assert len(table.files) == 9 and np.allclose(table.scores["score"], scores["score"])
    assert set(read_image_scores(tmp_path / "image_scores.csv").scores) == {"score", "other"}


@pytest.mark.parametrize("present", [[], ["metrics.json"], ["image_scores.csv"]])
def test_a_folder_without_the_evaluation_files_is_named(tmp_path, present):
    for name in present:
        (tmp_path / name).write_text("{}")
    absent = [n for n in ("metrics.json", "image_scores.csv") if n not in present]
    with pytest.raises(FileNotFoundError) as err:
        write_html_report(tmp_path)
    assert str(tmp_path) in str(err.value) and all(n in str(err.value) for n in absent)
    with pytest.raises(SystemExit, match="medad-monai report: .*" + absent[0]):
        Commands().report(str(tmp_path))


def test_cli_prints_the_page_it_wrote(run_dir, tmp_path, capsys):
    Commands().report(str(run_dir), out=str(tmp_path / "r.html"), resamples=20)
    assert capsys.readouterr().out.strip() == str(tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_the_browser_check_catches_a_broken_page(tmp_path):
    """The checks above can fail: a missing image, a request off the machine, a script error and a blank page."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png" alt="gone"><img src="http://127.0.0.1:9/x.png">'
        "<script>undefinedFunction()</script></body></html>"
    )
    problems = "\n".join(check_page(broken).problems())
    for expected in ("image did not load: gone", "request outside the file: http://127.0.0.1:9/x.png", "page error"):
        assert expected in problems
    assert "screenshot is blank" in problems
