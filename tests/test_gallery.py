"""The error gallery (medad_monai.handlers.gallery.ErrorGallery) on an Ignite engine fed hand-made maps: which
images it keeps, that it never holds more than k per side, what gallery.json says and the overlays it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from PIL import Image
from torch import nn

from medad_monai.handlers.gallery import ErrorGallery

SIZE = 8


class _Model(nn.Module):
    """A stand-in network: a threshold buffer, a stated reduction and a forward whose map's mean is the image's
    mean (so an image of constant value v scores v under both reductions)."""

    def __init__(self, threshold: float, reduction: str = "max") -> None:
        super().__init__()
        self.score_reduction = reduction
        self.register_buffer("threshold", torch.tensor(threshold))
        self.calls = 0
        self.modes: list[bool] = []  # training flag at each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.append(self.training)
        return x[:, :1].clone()


def _item(name: str, label: int, score: float, with_map: bool = True) -> dict:
    """One decollated output: an image of constant value ``score`` (3 channels), named ``name``, and, unless told
    otherwise, a map whose maximum is ``score`` (one pixel) above a floor of 0."""
    image = MetaTensor(torch.full((3, SIZE, SIZE), score), meta={"filename_or_obj": f"/data/test/{name}.png"})
    item = {"image": image, "label": torch.tensor([label])}
    if with_map:
        amap = torch.zeros(1, SIZE, SIZE)
        amap[0, 2, 3] = score
        item["pred"] = amap
    return item


def _run(gallery: ErrorGallery, batches: list[list[dict]], watch: list[int] | None = None) -> Engine:
    """Run ``gallery`` on an engine whose output and batch are the decollated items, as SupervisedEvaluator's are."""
    engine = Engine(lambda e, batch: batch)
    gallery.attach(engine)
    if watch is not None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: watch.append(gallery.kept))
    engine.run(batches, max_epochs=1)
    return engine


def _records(folder: Path) -> list[dict]:
    return json.loads((folder / "gallery" / "gallery.json").read_text())


def test_keeps_the_highest_normals_and_lowest_anomalies_and_names_the_errors(tmp_path):
    rng = np.random.default_rng(0)
    normal = {f"n{i:02d}": float(v) for i, v in enumerate(rng.permutation(np.linspace(0.05, 0.95, 19)))}
    anomalous = {f"a{i:02d}": float(v) for i, v in enumerate(rng.permutation(np.linspace(0.1, 1.9, 19)))}
    items = [_item(n, 0, s) for n, s in normal.items()] + [_item(n, 1, s) for n, s in anomalous.items()]
    items = [items[i] for i in rng.permutation(len(items))]
    kept_counts: list[int] = []
    gallery = ErrorGallery(tmp_path, _Model(threshold=0.82), k=3)
    _run(gallery, [items[i : i + 4] for i in range(0, len(items), 4)], watch=kept_counts)

    assert max(kept_counts) <= 6 and kept_counts[-1] == 6  # bounded: k per side, whatever the test set
    records = _records(tmp_path)
    top_normals = sorted(normal, key=normal.get, reverse=True)[:3]
    low_anomalous = sorted(anomalous, key=anomalous.get)[:3]
    by_kind = {
        kind: [Path(r["file"]).stem for r in records if r["kind"] == kind] for kind in {r["kind"] for r in records}
    }
    # normals 0.95, 0.9, 0.85 are all above 0.82: false positives, most confident first; no "hardest normal" left
    assert by_kind["false_positive"] == top_normals and "hardest_normal" not in by_kind
    # anomalous 0.1, 0.2, 0.3 at or below 0.82: false negatives, the lowest (most confidently missed) first
    assert by_kind["false_negative"] == low_anomalous and "hardest_anomalous" not in by_kind
    assert [r["kind"] for r in records] == ["false_positive"] * 3 + ["false_negative"] * 3
    for r in records:
        name = Path(r["file"]).stem
        assert r["score"] == pytest.approx({**normal, **anomalous}[name], abs=1e-6)
        assert r["label"] == (1 if name.startswith("a") else 0)
        assert r["threshold"] == pytest.approx(0.82) and r["reduction"] == "max"
        assert r["file"] == f"/data/test/{name}.png" and r["rank"] >= 1
        assert r["colour_max"] == pytest.approx(0.95, abs=1e-6)  # one scale: the largest kept map
        png = tmp_path / "gallery" / r["png"]
        assert r["png"].startswith(f"{r['kind']}_{r['rank']:02d}_{name}")
        with Image.open(png) as im:  # the image and, beside it, the overlay, enlarged to at least 160 px high
            assert im.mode == "RGB" and im.height >= 160 and im.width > 2 * im.height
    assert sorted(p.name for p in (tmp_path / "gallery").glob("*.png")) == sorted(r["png"] for r in records)


def test_below_the_threshold_they_are_only_the_hardest(tmp_path):
    items = [_item("n0", 0, 0.3), _item("n1", 0, 0.6), _item("n2", 0, 0.2), _item("a0", 1, 0.7), _item("a1", 1, 0.9)]
    _run(ErrorGallery(tmp_path, _Model(threshold=0.5), k=2), [items])
    kinds = [(r["kind"], Path(r["file"]).stem) for r in _records(tmp_path)]
    assert kinds == [
        ("false_positive", "n1"),  # 0.6 > 0.5
        ("hardest_normal", "n0"),  # 0.3: kept (top 2 normals) but correctly below the threshold
        ("hardest_anomalous", "a0"),  # 0.7 and 0.9: both caught, the lower one first
        ("hardest_anomalous", "a1"),
    ]


def test_an_uncalibrated_model_decides_nothing(tmp_path):
    items = [_item("n0", 0, 0.9), _item("a0", 1, 0.1)]
    _run(ErrorGallery(tmp_path, _Model(threshold=math.nan), k=2), [items])
    records = _records(tmp_path)
    assert [r["kind"] for r in records] == ["hardest_normal", "hardest_anomalous"]
    assert all(math.isnan(r["threshold"]) for r in records)


def test_without_maps_in_the_output_the_network_draws_them_with_its_reduction(tmp_path):
    """An output without a map: the gallery runs the network (one pass per batch, in eval mode, as MONAI's evaluator
    leaves it in training mode after each iteration; the mode is restored) and scores its map with the reduction the
    network states (here the mean of a constant image: the constant)."""
    model = _Model(threshold=0.5, reduction="mean")
    model.train()
    batches = [[_item("n0", 0, 0.7, False), _item("a0", 1, 0.4, False)], [_item("n1", 0, 0.1, False)]]
    _run(ErrorGallery(tmp_path, model, k=1), batches)
    assert model.calls == 2 and model.modes == [False, False] and model.training
    records = _records(tmp_path)
    assert [(r["kind"], Path(r["file"]).stem, round(r["score"], 6)) for r in records] == [
        ("false_positive", "n0", 0.7),
        ("false_negative", "a0", 0.4),
    ]
    assert records[0]["reduction"] == "mean"


def test_a_new_run_replaces_the_previous_gallery(tmp_path):
    _run(ErrorGallery(tmp_path, _Model(0.5), k=2), [[_item("old_n", 0, 0.9), _item("old_a", 1, 0.1)]])
    (tmp_path / "gallery" / "notes.png").write_bytes(b"not ours")  # a file the handler did not write stays
    _run(ErrorGallery(tmp_path, _Model(0.5), k=2), [[_item("new_n", 0, 0.8)]])
    records = _records(tmp_path)
    assert [Path(r["file"]).stem for r in records] == ["new_n"]
    assert sorted(p.name for p in (tmp_path / "gallery").glob("*.png")) == sorted([records[0]["png"], "notes.png"])


def test_k_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="k >= 1"):
        ErrorGallery(tmp_path, _Model(0.5), k=0)


def test_a_map_under_another_key_is_read_without_running_the_network(tmp_path):
    """DDAD's evaluation outputs every map's score and the served map under ``map``: the default keys find it."""
    items = [_item("n0", 0, 0.9), _item("a0", 1, 0.2)]
    for item in items:
        item["map"] = item.pop("pred")
    model = _Model(threshold=0.5)
    _run(ErrorGallery(tmp_path, model, k=1), [items])
    assert model.calls == 0
    assert [(r["kind"], round(r["score"], 6)) for r in _records(tmp_path)] == [
        ("false_positive", 0.9),
        ("false_negative", 0.2),
    ]
