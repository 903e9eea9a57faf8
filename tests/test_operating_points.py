"""Operating points from validation normals, the calibration scores a model stores, and the report that uses both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.networks.utils import copy_model_state
from torch import nn

from medad_monai.handlers.report import EvaluationReport
from medad_monai.handlers.threshold import calibrate_threshold
from medad_monai.metrics.operating_points import (
    operating_point,
    quantile_threshold,
    specificity_operating_points,
    specificity_threshold,
)
from medad_monai.networks.calibration import (
    CAPACITY,
    calibration_scores,
    fill_missing_calibration_scores,
    register_calibration_scores,
)


class _Calibrated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.register_buffer("threshold", torch.tensor(float("nan")))
        register_calibration_scores(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_quantile_threshold_hand_computed():
    # numpy's linear rule: position 0.9 * (100 - 1) = 89.1 between the 90th and 91st sorted values
    assert quantile_threshold(np.arange(1.0, 101.0), 0.9) == pytest.approx(90.1)
    with pytest.raises(ValueError, match="at least one"):
        quantile_threshold(np.zeros(0))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        quantile_threshold(np.ones(3), 0.0)


def test_specificity_threshold_interval_contains_it_and_narrows_with_more_normals():
    rng = np.random.default_rng(0)
    few = specificity_threshold(rng.normal(size=20), 0.95, resamples=2000, seed=1)
    many = specificity_threshold(rng.normal(size=2000), 0.95, resamples=2000, seed=1)
    for point in (few, many):
        low, high = point["threshold_ci95"]
        assert low <= point["threshold"] <= high
    assert np.diff(many["threshold_ci95"])[0] < np.diff(few["threshold_ci95"])[0] / 3
    assert many["threshold"] == pytest.approx(1.645, abs=0.1)  # the standard normal's 95th percentile
    assert few["n_normals"] == 20
    assert np.isnan(specificity_threshold(np.arange(5.0), 0.9, resamples=0)["threshold_ci95"]).all()


def test_operating_point_hand_computed():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.25, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    point = operating_point(scores, labels, 0.5, resamples=500, seed=0)
    assert point["sensitivity"] == pytest.approx(3 / 4)  # 0.6, 0.7, 0.8 above 0.5; 0.25 missed
    assert point["specificity"] == pytest.approx(3 / 4)  # 0.9 is a false positive
    assert point["sensitivity_ci95"][0] <= 0.75 <= point["sensitivity_ci95"][1]


def test_specificity_operating_points_use_the_validation_normals_only():
    normals = np.arange(1.0, 101.0)
    test_scores = np.array([50.0, 95.0, 99.5, 100.5])
    labels = np.array([0, 0, 1, 1])
    points = specificity_operating_points(normals, test_scores, labels, (0.9, 0.99), resamples=0)
    assert [p["threshold"] for p in points] == pytest.approx([90.1, 99.01])
    assert points[0]["sensitivity"] == 1.0 and points[0]["specificity"] == 0.5  # 95 > 90.1: a false positive
    assert points[1]["sensitivity"] == 1.0 and points[1]["specificity"] == 1.0
    with pytest.raises(ValueError, match="target specificity"):
        specificity_operating_points(normals, test_scores, labels, (1.0,))


def test_calibration_scores_round_trip_summary_and_old_checkpoints():
    net = _Calibrated()
    assert calibration_scores(net).size == 0  # not calibrated
    value = calibrate_threshold(net, np.array([3.0, 1.0, 2.0, 4.0]), 0.5)
    assert value == pytest.approx(2.5) and float(net.threshold) == pytest.approx(2.5)
    np.testing.assert_allclose(calibration_scores(net), [1.0, 2.0, 3.0, 4.0])
    # more normals than the buffer holds: its mid-point quantiles, which keep the quantiles of the whole set
    many = np.random.default_rng(0).normal(size=10 * CAPACITY)
    calibrate_threshold(net, many, 0.95)
    stored = calibration_scores(net)
    assert stored.size == CAPACITY
    assert np.quantile(stored, 0.95) == pytest.approx(np.quantile(many, 0.95), abs=0.01)
    # a checkpoint from before the buffer loads with no scores
    state = {k: v for k, v in net.state_dict().items() if k != "calibration_scores"}
    fill_missing_calibration_scores(state, "")
    fresh = _Calibrated()
    fresh.load_state_dict(state)
    assert calibration_scores(fresh).size == 0


def test_calibration_scores_survive_ckpt_export_copy_and_torchscript():
    net = _Calibrated()
    calibrate_threshold(net, np.array([0.5, 0.7, 0.9]), 0.95)
    fresh = _Calibrated()
    copy_model_state(fresh, net.state_dict())  # how MONAI's ckpt_export fills the network: equal shapes only
    np.testing.assert_allclose(calibration_scores(fresh), [0.5, 0.7, 0.9], rtol=1e-6)
    scripted = torch.jit.script(net)
    np.testing.assert_allclose(calibration_scores(scripted), [0.5, 0.7, 0.9], rtol=1e-6)


def _evaluate(net: nn.Module, scores: dict[str, np.ndarray], labels: np.ndarray, out, **kwargs) -> dict:
    items = [{"label": int(y), **{k: float(v[i]) for k, v in scores.items()}} for i, y in enumerate(labels)]
    engine = Engine(lambda e, batch: batch)
    EvaluationReport(out, score_names=list(scores), network=net, seed=3, **kwargs).attach(engine)
    engine.run([[item] for item in items], max_epochs=1)
    return json.loads((out / "metrics.json").read_text())


def test_report_writes_operating_points_calibration_and_comparisons(tmp_path):
    rng = np.random.default_rng(0)
    net = _Calibrated()
    validation = rng.normal(size=40)
    calibrate_threshold(net, validation, 0.95)
    labels = np.repeat([0, 1], 30)
    good = np.where(labels == 1, rng.normal(2.0, 1.0, 60), rng.normal(0.0, 1.0, 60))
    noise = rng.normal(size=60)
    record = _evaluate(net, {"score": good, "other": noise}, labels, tmp_path, bootstrap=500, threshold_quantile=0.95)
    assert record["decided_score"] == "score"
    assert record["calibration"]["n"] == 40 and record["calibration"]["quantile"] == 0.95
    np.testing.assert_allclose(record["calibration"]["scores"], np.sort(validation), rtol=1e-6)
    points = record["operating_points"]
    assert [p["target_specificity"] for p in points] == [0.9, 0.95, 0.99]
    # the 95% target is the rule the stored threshold was calibrated by, on the same normals
    assert points[1]["threshold"] == pytest.approx(record["threshold"], rel=1e-6)
    assert points[1]["sensitivity"] == pytest.approx(record["results"]["score"]["sensitivity"])
    assert points[0]["threshold"] < points[1]["threshold"] < points[2]["threshold"]
    assert points[0]["sensitivity"] >= points[2]["sensitivity"]
    assert [c["method"] for c in record["comparisons"]] == ["paired bootstrap", "DeLong"]
    for comparison in record["comparisons"]:
        assert comparison["a"] == "score" and comparison["b"] == "other"
        assert comparison["low"] > 0 and comparison["p_value"] < 0.01  # the informative score beats noise
    table = (tmp_path / "results.md").read_text()
    assert "| target specificity (%) | threshold |" in table and "paired bootstrap" in table


def test_report_without_calibration_scores_skips_operating_points(tmp_path):
    net = _Calibrated()
    net.threshold.fill_(0.5)  # an old model: a threshold but no recorded normals
    labels = np.repeat([0, 1], 5)
    record = _evaluate(net, {"score": labels + 0.1 * np.arange(10)}, labels, tmp_path, bootstrap=100)
    assert "operating_points" not in record and "calibration" not in record
    assert "target specificity" not in (tmp_path / "results.md").read_text()
