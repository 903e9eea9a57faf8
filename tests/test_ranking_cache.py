"""Study ranking for active learning ("most anomalous first", "nearest the threshold") and the score cache keyed by
study path, mtime/size and model version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_volume_inference import TINY, make_ddad_bundle

from medad_monai.inference import (
    ScoreCache,
    StudyRanker,
    load_bundle_model,
    model_version,
    most_anomalous,
    nearest_threshold,
    score_volume,
)

SCORES = {"a.png": 0.2, "b.png": 0.9, "c.png": 0.55, "d.png": 0.4}


@pytest.fixture()
def studies(tmp_path) -> list[Path]:
    """Four small PNG studies; the fake scorer reads each score from ``SCORES`` by name."""
    folder = tmp_path / "studies"
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name in SCORES:
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


class CountingScorer:
    """A scoring function that counts its calls."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores, self.calls = scores, 0

    def __call__(self, path: str) -> float:
        self.calls += 1
        name = Path(path).name
        if name not in self.scores:
            raise ValueError(f"cannot read image '{path}'")
        return self.scores[name]


def test_rank_functions():
    assert [k for k, _ in most_anomalous(SCORES)] == ["b.png", "c.png", "d.png", "a.png"]
    assert [k for k, _ in nearest_threshold(SCORES, 0.5)] == ["c.png", "d.png", "a.png", "b.png"]
    assert most_anomalous({"x": float("nan"), "y": 0.1})[-1][0] == "x"
    with pytest.raises(ValueError, match="calibrated"):
        nearest_threshold(SCORES, float("nan"))
    # each study against its own threshold (a volume decided with a volume threshold): d 0.4 is on its 0.4
    own = {"a.png": 0.5, "b.png": 0.5, "c.png": 0.5, "d.png": 0.4}
    assert [k for k, _ in nearest_threshold(SCORES, own)][:2] == ["d.png", "c.png"]
    with pytest.raises(ValueError, match="calibrated"):
        nearest_threshold(SCORES, {**own, "a.png": float("nan")})


def test_ranker_ranks_each_study_against_the_threshold_it_is_decided_with(studies, tmp_path):
    """A score function giving ``(score, threshold)`` (``StudyRanker.for_model``: a volume and its volume
    threshold); the thresholds persist in the cache with the scores."""
    own = {"a.png": 0.5, "b.png": 0.5, "c.png": 0.5, "d.png": 0.4}
    scorer = CountingScorer(SCORES)
    cache = tmp_path / "scores.json"

    def with_threshold(path: str) -> tuple[float, float]:
        return scorer(path), own[Path(path).name]

    ranker = StudyRanker(with_threshold, cache, model_version="v1", threshold=0.5)
    assert ranker.next_study(studies, "nearest_threshold") == str(studies[3])  # d.png, on its own 0.4
    again = StudyRanker(with_threshold, cache, model_version="v1", threshold=0.5)  # from the cache alone
    assert again.next_study(studies, "nearest_threshold") == str(studies[3]) and scorer.calls == 4


def test_ranker_orders_and_caches(studies, tmp_path):
    scorer = CountingScorer(SCORES)
    cache = tmp_path / "cache" / "scores.json"
    ranker = StudyRanker(scorer, cache, model_version="v1", threshold=0.5)
    ranked = ranker.most_anomalous(studies)
    assert [Path(p).name for p, _ in ranked] == ["b.png", "c.png", "d.png", "a.png"]
    assert scorer.calls == 4 and ranker.cache.misses == 4 and cache.is_file()
    assert ranker.next_study(studies, "nearest_threshold") == str(studies[2])  # c.png, 0.55
    assert scorer.calls == 4 and ranker.cache.hits == 4  # second request: all cached

    # a new ranker (a new request / server restart) reads the persisted cache
    again = StudyRanker(scorer, cache, model_version="v1", threshold=0.5)
    assert again.next_study(studies) == str(studies[1]) and scorer.calls == 4

    # a modified study is rescored, the others are not
    os.utime(studies[0], ns=(0, 10**9))
    again.scores(studies)
    assert scorer.calls == 5

    # a new model version invalidates every entry
    v2 = StudyRanker(scorer, cache, model_version="v2", threshold=0.5)
    v2.scores(studies)
    assert scorer.calls == 9
    assert json.loads(cache.read_text())["model_version"] == "v2"
    assert not list(cache.parent.glob(".*.tmp"))


def test_unscorable_study_is_reported_and_the_rest_served(studies, tmp_path):
    bad = tmp_path / "studies" / "broken.png"
    bad.write_bytes(b"not a png")
    ranker = StudyRanker(CountingScorer(SCORES), tmp_path / "c.json", model_version="v1")
    assert ranker.next_study([*studies, bad]) == str(studies[1])
    assert "broken.png" in ranker.errors[str(bad)]
    assert ranker.next_study([bad]) is None


def test_corrupt_cache_file_starts_empty(studies, tmp_path):
    cache = tmp_path / "c.json"
    cache.write_text("{not json")
    ranker = StudyRanker(CountingScorer(SCORES), cache, model_version="v1")
    assert len(ranker.scores(studies)) == 4
    assert json.loads(cache.read_text())["format"] == 1


def test_cache_keys_on_mtime_and_size_of_a_series_folder(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"x" * 10)
    cache = ScoreCache(tmp_path / "c.json", "v1")
    cache.put(series, 0.3)
    assert cache.get(series) == 0.3
    (series / "2.dcm").write_bytes(b"y" * 5)
    assert cache.get(series) is None


def test_real_model_ranking_and_invalidation_when_model_pt_changes(tmp_path, monkeypatch, studies):
    """With the DDAD bundle: the ranking follows score_volume's scores; rewriting model.pt invalidates the cache."""
    import medad_monai.inference.volume as volume

    root = make_ddad_bundle(tmp_path / "bundle")
    model = load_bundle_model(root, "cpu", overrides=TINY)
    calls = {"n": 0}
    real = volume.score_volume

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(volume, "score_volume", counting)
    cache = tmp_path / "scores.json"
    ranker = StudyRanker.for_model(model, cache)
    ranked = ranker.most_anomalous(studies[:2])
    expected = {str(p): score_volume(model, p).score for p in studies[:2]}
    assert [p for p, _ in ranked] == sorted(expected, key=lambda p: -expected[p])
    assert dict(ranked) == pytest.approx(expected, abs=1e-6)
    assert calls["n"] == 2
    StudyRanker.for_model(model, cache).most_anomalous(studies[:2])
    assert calls["n"] == 2  # cached for this model version

    version = model_version(root)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    state["threshold"].fill_(0.7)  # a recalibrated model: new bytes, new version
    torch.save(state, root / "models" / "model.pt")
    assert model_version(root) != version
    new_model = load_bundle_model(root, "cpu", overrides=TINY)
    assert new_model.model_version == model_version(root) and new_model.threshold == pytest.approx(0.7)
    StudyRanker.for_model(new_model, cache).most_anomalous(studies[:2])
    assert calls["n"] == 4
