"""The anomalib comparison (``medad-monai compare-anomalib``): data shared with the bundle, baselines, report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medad_monai.comparison.data import comparison_data
from medad_monai.comparison.runner import bundle_overrides, compare_with_anomalib, method_comparisons, summarize
from medad_monai.metrics.ranking import roc_auc

REPO = Path(__file__).resolve().parents[1]
needs_anomalib = pytest.mark.skipif(
    importlib.util.find_spec("anomalib") is None, reason="anomalib not installed: pip install -e '.[anomalib]'"
)


def _config(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())


def _parser(bundle: str, **overrides) -> ConfigParser:
    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    parser.update(overrides)
    return parser


def test_overrides_route_dataset_and_teacher_to_each_bundle_keys():
    d24 = bundle_overrides(_config("d24fad"), "demo:fundus", 96, 3, "imagenet", 4, {"num_support": 4})
    assert d24 == {
        "seed": 4,
        "target": "demo:fundus",
        "image_size": 96,
        "epochs": 3,
        "teacher_weights": "imagenet",
        "num_support": 4,
    }
    pdd = bundle_overrides(_config("pdd"), "demo:head_ct", teacher_weights="random")
    # one key for every bundle with a teacher: PDD's config sets both its teachers from it
    assert pdd == {"seed": 0, "dataset_dir": "demo:head_ct", "teacher_weights": "random"}
    config = _config("pdd")
    assert config["wrn_weights"] == config["vmamba_weights"] == "@teacher_weights"
    assert bundle_overrides(_config("ddad"), "demo:brain_mr", teacher_weights="random") == {
        "seed": 0,
        "dataset_dir": "demo:brain_mr",
    }


def test_summarize_against_a_hand_computed_operating_point():
    record = {
        "method": "m",
        "scores": [0.1, 0.4, 0.35, 0.8],
        "labels": [0, 0, 1, 1],
        "threshold": 0.38,
        "fit_seconds": 1.0,
        "latency_ms": 2.0,
        "peak_rss_mb": 3.0,
        "cuda_peak_mb": None,
        "description": "d",
    }
    row = summarize(record)
    assert row["auroc"] == pytest.approx(0.75)  # 3 of 4 anomalous/normal pairs ordered
    assert row["ap"] == pytest.approx((1 + 2 / 3) / 2)
    assert row["f1_max"] == pytest.approx(0.8)  # t = 0.35: tp 2, fp 1
    assert row["sensitivity"] == pytest.approx(0.5)  # 0.8 > 0.38, 0.35 not
    assert row["specificity"] == pytest.approx(0.5)  # 0.1 <= 0.38, 0.4 not


def test_one_class_data_keeps_test_images_out_of_training_and_calibration():
    data = comparison_data(_parser("pdd"))
    files = {k: {str(it["image"]) for it in getattr(data, k)} for k in ("train", "calibration", "test")}
    assert data.setting == "one-class" and data.dataset == "demo:brain_mr"
    assert files["train"] and files["calibration"] and files["test"]
    assert not files["train"] & files["test"] and not files["calibration"] & files["test"]
    assert not files["train"] & files["calibration"]
    assert {int(it["label"]) for it in data.test} == {0, 1}


def test_few_shot_baselines_learn_from_the_bundles_own_support_set():
    parser = _parser("d24fad", teacher_weights="random", num_support=4, seed=3)
    data = comparison_data(parser)
    loader = parser.get_parsed_content("support_loader")
    loader.apply()  # what the bundle does at evaluation: picks the K support images and calibrates
    assert data.setting == "few-shot" and len(data.train) == 4
    assert [str(it["image"]) for it in data.train] == loader.support_files
    support, calibration = set(loader.support_files), {str(it["image"]) for it in data.calibration}
    assert calibration and not calibration & support
    assert not calibration & {str(it["image"]) for it in data.test}


def test_masks_for_the_pixel_metric(tmp_path):
    from PIL import Image

    from medad_monai.comparison.data import load_masks

    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[:10, :10] = 255  # the top-left quarter
    Image.fromarray(mask).save(tmp_path / "m.png")
    items = [{"image": "n.png", "label": 0}, {"image": "a.png", "label": 1, "mask": str(tmp_path / "m.png")}]
    masks = load_masks(items, 8)
    assert masks.shape == (2, 1, 8, 8) and masks.dtype == torch.bool
    assert not masks[0].any()
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(masks[1, 0], expected)
    assert load_masks([{"image": "a.png", "label": 1}], 8) is None  # an anomaly without a mask: no pixel metric


def test_unknown_method_or_bundle_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        compare_with_anomalib("pdd", tmp_path, methods=["padim"])
    with pytest.raises(FileNotFoundError, match="no configs/train.json"):
        compare_with_anomalib(tmp_path / "nowhere", tmp_path / "out")


def test_a_failing_method_is_named_and_nothing_half_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("an earlier run's report")
    with pytest.raises(RuntimeError, match="patchcore failed"):
        compare_with_anomalib("pdd", out, methods=["patchcore"], teacher_weights=str(tmp_path / "missing.pth"))
    assert not (out / "results.md").exists() and not (out / "patchcore.json").exists()


@needs_anomalib
def test_baseline_backbones_get_the_bundles_teacher_weights(tmp_path):
    from torchvision.models import wide_resnet50_2

    from medad_monai.comparison.baselines import build_baseline
    from medad_monai.networks.teachers import WideResNetTeacher

    weights = tmp_path / "wrn.pth"
    torch.manual_seed(7)
    torch.save(wide_resnet50_2(weights=None).state_dict(), weights)
    teacher = WideResNetTeacher(weights=str(weights), normalize=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = teacher(x)
        rd, description = build_baseline("reverse_distillation", 64, str(weights))
        rd.eval()
        got = list(rd.model.encoder((x - rd.mean) / rd.std).values())
        patchcore, _ = build_baseline("patchcore", 64, str(weights))
        got_pc = list(patchcore.model.feature_extractor((x - rd.mean) / rd.std).values())
    assert "local file" in description
    for a, b in zip(got, expected[:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(got_pc, expected[1:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_anomalib
def test_baselines_learn_the_demo_normals():
    from medad_monai.comparison.baselines import build_baseline, fit_patchcore, fit_reverse_distillation
    from medad_monai.comparison.data import baseline_preprocessing, load_batch, load_masks

    data = comparison_data(_parser("pdd"))
    transform = baseline_preprocessing(data.image_size)
    train, test = load_batch(data.train, transform), load_batch(data.test, transform)
    labels = np.array([int(it["label"]) for it in data.test])
    cpu = torch.device("cpu")

    patchcore, _ = build_baseline("patchcore", data.image_size, "random")
    bank = fit_patchcore(patchcore, [train[i : i + 16] for i in range(0, len(train), 16)], cpu)
    with torch.no_grad():
        maps, scores = patchcore(test)
    assert maps.shape == (len(test), 1, data.image_size, data.image_size)
    assert 0 < bank < len(train) * (data.image_size // 8) ** 2
    # random WideResNet features on the demo brains (subjects differ, lesions tissue-like): measured image AUROC
    # 0.61 and pixel AUROC 0.84 against the lesion masks (chance 0.5)
    assert roc_auc(scores.numpy(), labels) > 0.55
    masks = load_masks(data.test, data.image_size)
    assert roc_auc(maps.flatten().numpy(), masks.flatten().numpy().astype(np.int64)) > 0.75

    rd, _ = build_baseline("reverse_distillation", data.image_size, "random")
    history = fit_reverse_distillation(rd, [train[i : i + 8] for i in range(0, 32, 8)], epochs=3, device=cpu)
    assert len(history) == 3 and history[-1] < history[0]


@needs_anomalib
def test_reverse_distillation_with_a_cached_encoder_trains_exactly_as_without():
    from medad_monai.comparison.baselines import build_baseline, fit_reverse_distillation, reverse_distillation_features
    from medad_monai.networks.feature_cache import FeatureCache

    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batches = [images[:2], images[2:]]
    runs = []
    for cache_encoder in (False, True):
        torch.manual_seed(1)  # the same random backbone and decoder initialisation for both
        rd, _ = build_baseline("reverse_distillation", 32, "random")
        history = fit_reverse_distillation(
            rd, batches, epochs=2, device=torch.device("cpu"), cache_encoder=cache_encoder
        )
        runs.append((history, rd.state_dict()))
    assert runs[0][0] == runs[1][0]  # every epoch's loss, bit for bit
    assert all(torch.equal(runs[0][1][k], v) for k, v in runs[1][1].items())
    # the cached path returns what anomalib's own training forward returns, and reads the encoder once per image
    rd.train()
    cache = FeatureCache()
    for _ in range(2):
        encoder, decoder = reverse_distillation_features(rd, images, cache)
    expected = rd(images)
    for got, want in zip(encoder + decoder, expected[0] + expected[1]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (cache.misses, cache.hits) == (4, 4)


@pytest.mark.slow
@needs_anomalib
def test_compare_a_few_shot_bundle_end_to_end(tmp_path):
    rows = compare_with_anomalib(
        "d24fad",
        tmp_path,
        methods=(
            "bundle",
            "patchcore",
        ),  # RD's few-shot fit is the same code path as PatchCore's data (and costs a minute)
        epochs=1,
        rd_epochs=1,
        batch_size=4,
        timing_repeats=2,
        image_size=64,
        overrides={"epoch_length": 2, "batch_size": 2},
    )
    assert [r["method"] for r in rows] == ["bundle", "patchcore"]
    for r in rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["specificity"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0
        assert r["fit_seconds"] > 0 and r["latency_ms"] > 0 and r["peak_rss_mb"] > 100
    records = {r["method"]: json.loads((tmp_path / f"{r['method']}.json").read_text()) for r in rows}
    assert len({tuple(r["files"]) for r in records.values()}) == 1  # one test split for all
    assert all(r["data"]["train_images"] == 2 for r in records.values())  # K=2 target normals
    stored = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)["threshold"]
    assert records["bundle"]["threshold"] == pytest.approx(float(stored))
    report = (tmp_path / "results.md").read_text()
    assert "few-shot" in report and "| patchcore |" in report and "x1.00" in report
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["provenance"]["anomalib"]
    # the bundle against each baseline on the same images: a paired bootstrap and DeLong's test each
    assert [(c["b"], c["method"]) for c in saved["comparisons"]] == [
        ("patchcore", test) for test in ("paired bootstrap", "DeLong")
    ]
    assert "| bundle - patchcore |" in report
    for picture in ("roc.png", "score_histograms.png"):
        assert (tmp_path / picture).stat().st_size > 1000


def test_method_comparisons_pair_the_same_images_only():
    labels = [0, 0, 0, 1, 1, 1]
    files = [f"{i}.png" for i in range(6)]
    bundle = {"method": "bundle", "scores": [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], "labels": labels, "files": files}
    rd = {"method": "reverse_distillation", "scores": [0.5, 0.2, 0.3, 0.4, 0.8, 0.1], "labels": labels, "files": files}
    comparisons = method_comparisons([bundle, rd], resamples=500, seed=0)
    assert [c["method"] for c in comparisons] == ["paired bootstrap", "DeLong"]
    # AUROC 1.0 against 5/9 (rd ranks 0.4 and 0.1 among the anomalies below 0.5 and 0.2, 0.3 of the normals)
    assert all(c["difference"] == pytest.approx(1.0 - 5 / 9) for c in comparisons)
    shuffled = dict(rd, files=files[::-1], labels=labels[::-1], scores=rd["scores"][::-1])
    with pytest.raises(ValueError, match="reverse_distillation was not tested on the bundle's test images"):
        method_comparisons([bundle, shuffled])
