"""``medad-monai benchmark``: the per-bundle tables, leave-one-domain-out cells, baseline reuse, resume, failures.

The methods' processes are replaced by a fake that writes a made-up record, so nothing trains here (the real
subprocess path is covered by the compare-anomalib end-to-end test)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medad_monai.comparison import benchmark
from medad_monai.comparison.benchmark import BenchmarkCell, cell_spec, leave_one_out_sources, run_benchmark
from medad_monai.comparison.benchmark_report import Stat, aggregate, format_benchmark, score_table
from medad_monai.data.demo import DEMO_DOMAINS
from medad_monai.visualize import plot_grouped_bars

METHODS = ("bundle", "reverse_distillation", "patchcore")
SETTINGS = {"teacher_weights": "random", "rd_epochs": 20, "device": "cpu", "threads": 0}


def _row(domain: str, seed: int, method: str, auroc: float, fit: float, pixel: float | None = 0.5) -> dict:
    return {
        "bundle": "pdd",
        "domain": domain,
        "seed": seed,
        "method": method,
        "status": "ok",
        "setting": "one-class",
        "auroc": auroc,
        "ap": auroc / 2,
        "pixel_auroc": pixel,
        "fit_seconds": fit,
        "latency_ms": 2.0,
    }


def _hand_rows() -> list[dict]:
    """pdd on domains a and b, seeds 0 and 1; RD and PatchCore copy the bundle's numbers, PatchCore lacks pixels."""
    auroc = {("a", 0): 0.8, ("a", 1): 0.9, ("b", 0): 0.6, ("b", 1): 0.75}
    fit = {("a", 0): 10.0, ("a", 1): 14.0, ("b", 0): 20.0, ("b", 1): 30.0}
    rows = []
    for (domain, seed), value in auroc.items():
        for method in METHODS:
            pixel = None if method == "patchcore" else 0.5
            rows.append(_row(domain, seed, method, value, fit[domain, seed], pixel))
    return rows


def test_table_cells_are_mean_and_sample_std_over_seeds_and_the_mean_row_averages_domains():
    table = aggregate(_hand_rows(), "pdd", ["a", "b"], [0, 1])
    assert list(table) == ["a", "b", "mean"]
    a, b, mean = (table[k]["bundle"] for k in ("a", "b", "mean"))
    assert a["auroc"].mean == pytest.approx(0.85) and a["auroc"].std == pytest.approx(np.sqrt(0.005))
    assert b["auroc"].mean == pytest.approx(0.675) and b["auroc"].std == pytest.approx(np.sqrt(2 * 0.075**2))
    assert b["fit_seconds"].mean == pytest.approx(25.0) and b["fit_seconds"].std == pytest.approx(np.sqrt(50.0))
    # mean row: per seed the mean over domains (0.7, 0.825), then mean ± std over seeds
    assert mean["auroc"].mean == pytest.approx((0.85 + 0.675) / 2)
    assert mean["auroc"].std == pytest.approx(np.std([0.7, 0.825], ddof=1))
    assert mean["fit_seconds"].mean == pytest.approx(18.5) and mean["fit_seconds"].std == pytest.approx(
        np.std([15.0, 22.0], ddof=1)
    )
    assert table["a"]["patchcore"]["pixel_auroc"].status == "n/a"
    assert mean["pixel_auroc"] == Stat(0.5, 0.0)

    text = format_benchmark(_hand_rows(), ["pdd"], ["a", "b"], [0, 1], SETTINGS, 3725.0)
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("| domain |"))
    assert head.split(" | ")[1:6] == ["pdd AUROC", "pdd AP", "pdd pixel AUROC", "pdd fit s", "pdd ms/image"]
    assert "RD AUROC" in head and "PatchCore ms/image" in head
    row_b = next(line for line in lines if line.startswith("| b |")).split(" | ")
    assert row_b[1:6] == ["67.5 ± 10.6", "33.8 ± 5.3", "50.0 ± 0.0", "25.0 ± 7.1", "2.0 ± 0.0"]
    row_mean = next(line for line in lines if line.startswith("| mean |")).split(" | ")
    assert row_mean[1] == "76.2 ± 8.8" and row_mean[-3] == "n/a"  # PatchCore's pixel AUROC
    assert "2 seeds (0, 1)" in text and "ddof=1" in text
    assert lines[-1] == "Total wall-clock time: 1 h 02 min 05 s."

    single = format_benchmark([r for r in _hand_rows() if r["seed"] == 0], ["pdd"], ["a", "b"], [0], SETTINGS, 5.0)
    assert "| a | 80.0 | 40.0 | 50.0 | 10.0 | 2.0 |" in single and "±" not in single


def test_a_missing_or_failed_run_marks_its_domain_and_the_mean_failed():
    rows = [r for r in _hand_rows() if not (r["domain"] == "a" and r["seed"] == 1 and r["method"] == "bundle")]
    rows.append({"bundle": "pdd", "domain": "b", "seed": 0, "method": "patchcore", "status": "failed"})
    rows = [
        r for r in rows if not (r["domain"] == "b" and r["seed"] == 0 and r["method"] == "patchcore" and "auroc" in r)
    ]
    table = aggregate(rows, "pdd", ["a", "b"], [0, 1])
    assert table["a"]["bundle"]["auroc"].status == "failed" and table["mean"]["bundle"]["auroc"].status == "failed"
    assert table["b"]["bundle"]["auroc"].status == "ok"
    assert table["b"]["patchcore"]["auroc"].format(True) == "failed"
    assert table["a"]["reverse_distillation"]["auroc"].format(True) == "85.0 ± 7.1"


def test_few_shot_cells_leave_the_target_out_and_one_class_cells_train_on_it():
    domains = ["brain_mr", "fundus", "head_ct"]
    d24 = cell_spec(BenchmarkCell("d24fad", "fundus", 2), domains, teacher_weights="random")
    assert d24["overrides"] == {
        "seed": 2,
        "target": "demo:fundus",
        "sources": ["demo:brain_mr", "demo:head_ct"],
        "teacher_weights": "random",
        "teacher_cache": True,  # the same training, later epochs without the teacher
    }
    assert d24["feature_cache"] is True  # and RD's encoder
    assert Path(d24["configs"]).parent.name == "d24fad"
    for bundle in ("ddad", "pdd"):
        spec = cell_spec(BenchmarkCell(bundle, "fundus", 0), domains, teacher_weights="random", rd_epochs=3)
        assert spec["overrides"]["dataset_dir"] == "demo:fundus" and spec["overrides"]["seed"] == 0
        assert "sources" not in spec["overrides"] and "target" not in spec["overrides"]
        assert spec["rd_epochs"] == 3
        # only a bundle with a frozen teacher gets the cache option (DDAD has none)
        assert spec["overrides"].get("teacher_cache") == (True if bundle == "pdd" else None)
    off = cell_spec(BenchmarkCell("pdd", "fundus", 0), domains, feature_cache=False)
    assert off["overrides"]["teacher_cache"] is False and off["feature_cache"] is False
    # one target alone: it still trains on every other demo domain
    assert leave_one_out_sources("fundus", ["fundus"]) == [f"demo:{d}" for d in DEMO_DOMAINS if d != "fundus"]


class FakeLaunch:
    """Stands in for :func:`~medad_monai.comparison.runner.launch_method`: records each call, writes a record (or
    fails for the bundles in ``failing``)."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failing = failing

    def __call__(self, spec_file: Path, method: str, result: Path) -> dict | None:
        spec = json.loads(Path(spec_file).read_text())
        bundle = Path(spec["configs"]).parent.name
        self.calls.append((bundle if method == "bundle" else "-", method))
        result.unlink(missing_ok=True)
        if method == "bundle" and bundle in self.failing:
            return None
        good = {"bundle": 0.2, "reverse_distillation": 0.6, "patchcore": 0.9}[method]
        record = {
            "method": method,
            "description": f"fake {method}",
            "threshold": 0.5,
            "pixel_auroc": 0.7,
            "scores": [0.1, 0.3, good, 0.9],
            "labels": [0, 0, 1, 1],
            "files": ["n0.png", "n1.png", "a0.png", "a1.png"],
            "fit_seconds": 1.5,
            "latency_ms": 3.0,
            "peak_rss_mb": 100.0,
            "cuda_peak_mb": None,
            "data": {
                "setting": "few-shot" if "target" in spec["overrides"] else "one-class",
                "dataset": spec["overrides"].get("target") or spec["overrides"].get("dataset_dir"),
                "train_images": 2,
                "calibration_images": 2,
                "test_images": 4,
                "test_anomalous": 2,
                "image_size": 64,
                "threshold_quantile": 0.95,
            },
        }
        result.write_text(json.dumps(record))
        return record


def test_baselines_are_fitted_once_per_data_and_resume_reruns_nothing(tmp_path, monkeypatch, capsys):
    fake = FakeLaunch()
    monkeypatch.setattr(benchmark, "launch_method", fake)
    out = tmp_path / "bench"
    (out).mkdir()
    (out / "benchmark.png").write_text("an earlier run's chart")
    rows = run_benchmark(out, bundles="ddad,pdd", domains="demo:fundus", seeds=0, rd_epochs=2)
    # DDAD and PDD share the fundus splits: one RD and one PatchCore for both
    assert sorted(fake.calls) == sorted(
        [("ddad", "bundle"), ("pdd", "bundle"), ("-", "reverse_distillation"), ("-", "patchcore")]
    )
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    keys = {r["baseline_key"] for r in rows if r["method"] != "bundle"}
    assert len(keys) == 1 and (out / "baselines" / keys.pop() / "patchcore.json").is_file()
    for bundle in ("ddad", "pdd"):
        cell = out / bundle / "fundus" / "seed0"
        for name in ("spec.json", "bundle.json", "patchcore.json", "reverse_distillation.json", "results.md"):
            assert (cell / name).is_file(), (bundle, name)
    report = (out / "results.md").read_text()
    assert "### ddad (one-class" in report and "### pdd (one-class" in report
    assert "| fundus | 75.0 | " in report  # the fake bundle's AUROC: normals 0.1, 0.3, anomalous 0.2, 0.9
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["seeds"] == [0] and saved["settings"]["domains"] == ["fundus"]
    assert saved["provenance"]["seeds"] == [0] and saved["provenance"]["wall_seconds"] >= 0
    assert saved["provenance"]["started"] <= saved["provenance"]["finished"]
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("bundle,domain,seed,method,status") and len(csv) == 7
    png = (out / "benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    fake.calls.clear()
    run_benchmark(out, bundles="ddad,pdd", domains="fundus", seeds=0, rd_epochs=2, resume=True)
    assert fake.calls == []
    resumed = (out / "results.md").read_text()
    assert resumed.split("Total wall-clock")[0] == report.split("Total wall-clock")[0]
    assert "6 of 6 results taken from an earlier run with --resume" in resumed.splitlines()[-1]

    # another setting is another run: a changed spec is rerun even with --resume
    run_benchmark(out, bundles="pdd", domains="fundus", seeds=0, rd_epochs=3, resume=True)
    assert sorted(fake.calls) == sorted([("pdd", "bundle"), ("-", "reverse_distillation"), ("-", "patchcore")])

    # the command prints the table, total time at its bottom
    from medad_monai.cli import Commands

    fake.calls.clear()
    Commands().benchmark(out=str(out), bundles="pdd", domains="fundus", seeds=0, rd_epochs=3, resume=True)
    assert fake.calls == [] and "Total wall-clock time" in capsys.readouterr().out.strip().splitlines()[-1]


class SlowLaunch(FakeLaunch):
    """A :class:`FakeLaunch` that takes a while and counts how many calls run at once, and the threads asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.running = self.most = 0
        self.threads: set[int] = set()
        self.guard = threading.Lock()

    def __call__(self, spec_file: Path, method: str, result: Path) -> dict | None:
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(json.loads(Path(spec_file).read_text())["threads"])
        time.sleep(0.3)
        try:
            return super().__call__(spec_file, method, result)
        finally:
            with self.guard:
                self.running -= 1


@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_run_cells_side_by_side_and_still_fit_a_shared_baseline_once(tmp_path, monkeypatch, jobs):
    slow = SlowLaunch()
    monkeypatch.setattr(benchmark, "launch_method", slow)
    monkeypatch.setattr(benchmark.os, "cpu_count", lambda: 4)
    rows = run_benchmark(tmp_path, bundles="ddad,pdd", domains="fundus,head_ct", seeds=0, jobs=jobs)
    assert slow.most == jobs
    assert slow.threads == ({0} if jobs == 1 else {2})  # jobs x threads = the 4 cores
    # two one-class cells per domain share its baselines: one RD and one PatchCore per domain, whatever ran at once
    assert sorted(m for b, m in slow.calls if b == "-") == ["patchcore"] * 2 + ["reverse_distillation"] * 2
    assert [(r["bundle"], r["domain"]) for r in rows if r["method"] == "bundle"] == [
        ("ddad", "fundus"),
        ("ddad", "head_ct"),
        ("pdd", "fundus"),
        ("pdd", "head_ct"),
    ]  # the report keeps the cells' order
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["jobs"] == jobs
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_benchmark(tmp_path, bundles="pdd", domains="fundus", jobs=0)


def test_method_processes_get_the_allocator_settings_unless_the_user_set_them(monkeypatch):
    from medad_monai.comparison.runner import ALLOCATOR_ENV, method_environment

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    env = method_environment()
    assert env["MALLOC_TRIM_THRESHOLD_"] == ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"]
    assert env["MALLOC_TOP_PAD_"] == "0" and env["PATH"] == os.environ["PATH"]


def test_a_failing_cell_is_marked_and_named_and_the_others_still_run(tmp_path, monkeypatch):
    fake = FakeLaunch(failing=("ddad",))
    monkeypatch.setattr(benchmark, "launch_method", fake)
    out = tmp_path / "bench"
    with pytest.raises(RuntimeError, match=r"ddad on demo:fundus, seed 0: bundle"):
        run_benchmark(out, bundles="ddad,pdd", domains="fundus", seeds=0)
    assert ("pdd", "bundle") in fake.calls
    report = (out / "results.md").read_text()
    ddad = report.split("### ddad")[1].split("### pdd")[0]
    assert "| fundus | failed | failed | failed | failed | failed | 100.0 |" in ddad  # RD still ran
    assert "| mean | failed |" in ddad and "failed" not in report.split("### pdd")[1].split("Failed")[0]
    assert "- ddad on demo:fundus, seed 0: bundle" in report
    assert json.loads((out / "results.json").read_text())["failed"] == ["ddad on demo:fundus, seed 0: bundle"]
    assert (out / "pdd" / "fundus" / "seed0" / "results.md").is_file()
    assert (out / "ddad" / "fundus" / "seed0" / "patchcore.json").is_file()
    assert not (out / "ddad" / "fundus" / "seed0" / "bundle.json").exists()


def test_unknown_bundle_or_domain_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown bundle"):
        run_benchmark(tmp_path, bundles="padim")
    with pytest.raises(ValueError, match="knee_mr"):
        run_benchmark(tmp_path, domains="brain_mr,knee_mr")


def test_the_chart_has_one_panel_per_bundle(tmp_path):
    from PIL import Image

    series = {"pdd": ([90.0, np.nan, 80.0], [1.0, 0.0, 2.0]), "RD": ([95.0, 70.0, 82.5], [0.5, 1.0, 1.0])}
    one = plot_grouped_bars({"pdd": series}, ["a", "b", "mean"], tmp_path / "one.png", ylim=(0, 105))
    three = plot_grouped_bars({k: series for k in ("x", "y", "z")}, ["a", "b", "mean"], tmp_path / "three.png")
    for path in (one, three):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(one) as a, Image.open(three) as b:
        assert a.width == b.width and b.height > 2.5 * a.height


def test_a_cell_that_raises_fails_alone(tmp_path, monkeypatch):
    fake = FakeLaunch()
    monkeypatch.setattr(benchmark, "launch_method", fake)
    real = benchmark.baseline_key_material

    def unreadable(spec: dict) -> dict:
        if Path(spec["configs"]).parent.name == "ddad":
            raise OSError("dataset unreadable")
        return real(spec)

    monkeypatch.setattr(benchmark, "baseline_key_material", unreadable)
    with pytest.raises(RuntimeError) as err:
        run_benchmark(tmp_path, bundles="ddad,pdd", domains="fundus")
    assert str(err.value).count("ddad on demo:fundus, seed 0") == 3 and "pdd" not in str(err.value)
    assert fake.calls[0] == ("pdd", "bundle") and len(fake.calls) == 3


def test_every_score_of_a_multi_score_bundle_gets_its_own_table():
    rows = _hand_rows()
    for r in rows:
        if r["method"] == "bundle":  # DDAD-like: the bundle's own evaluation reports several scores
            r["score_auroc"] = {"rec": r["auroc"], "inter": 1 - r["auroc"]}
            r["served_map"] = "rec"
    table = score_table(rows, "pdd", ["a", "b"], [0, 1])
    assert table["a"]["rec"].mean == pytest.approx(0.85) and table["a"]["rec"].std == pytest.approx(0.0707107, 1e-5)
    # mean row: domains averaged per seed (0.7, 0.825), then mean ± std over the seeds
    assert table["mean"]["inter"].mean == pytest.approx(1 - 0.7625)
    text = format_benchmark(rows, ["pdd"], ["a", "b"], [0, 1], SETTINGS, 60.0)
    assert "| domain | rec | inter |" in text and "The served map: `rec`." in text
    for r in rows:
        r["score_auroc"] = {"score": r["auroc"]}  # one score: no extra table
    assert score_table(rows, "pdd", ["a", "b"], [0, 1]) == {}
