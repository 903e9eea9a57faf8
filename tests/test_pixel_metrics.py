"""Pixel-level metrics (medad_monai.metrics.pixel) and the PixelMetrics evaluation handler: hand-computed values,
a slow threshold-by-threshold reference, anomalib's AUPRO, and two million pixels."""

from __future__ import annotations

import types
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage

from medad_monai.metrics.pixel import aupro, best_dice, pixel_average_precision, pro_curve


def _hand_fixture() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4 images. Image 1: region A, a 2x2 block (4 px). Image 2: region B, two 2x2 blocks touching only at a
    corner (8 px: one region with 8-connectivity, two with 4-connectivity). 12 lesion pixels, 20 normal pixels.

    Scores, by distinct value:  0.9: A x1 | 0.8: B x4 | 0.7: normal x1 | 0.6: A x2 | 0.5: A x1 + normal x2 |
    0.4: normal x4 | 0.0: B x4 + normal x13.
    """
    map1 = np.array([[0.9, 0.6, 0.7, 0.0], [0.6, 0.5, 0.5, 0.4], [0.0, 0.4, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    map2 = np.array([[0.8, 0.8, 0.5, 0.4], [0.8, 0.8, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask1 = np.zeros((4, 4), dtype=np.int64)
    mask1[:2, :2] = 1
    mask2 = np.zeros((4, 4), dtype=np.int64)
    mask2[:2, :2] = 1
    mask2[2:, 2:] = 1
    return np.stack([map1, map2]), np.stack([mask1, mask2])


def test_pixel_average_precision_by_hand():
    maps, masks = _hand_fixture()
    # t    TP FP  precision  recall step (of 12)
    # 0.9   1  0  1          1
    # 0.8   5  0  1          4
    # 0.7   5  1  5/6        0
    # 0.6   7  1  7/8        2
    # 0.5   8  3  8/11       1
    # 0.4   8  7  8/15       0
    # 0.0  12 20  3/8        4
    # AP = (1 + 4 + 2 * 7/8 + 8/11 + 4 * 3/8) / 12 = (33/4 + 8/11) / 12 = 395/528
    assert pixel_average_precision(maps, masks) == pytest.approx(395 / 528, abs=1e-12)


def test_best_dice_by_hand():
    maps, masks = _hand_fixture()
    # Dice = 2TP / (TP + FP + 12): 0.9: 2/13, 0.8: 10/17, 0.7: 10/18, 0.6: 14/20, 0.5: 16/23, 0.4: 16/27, 0: 24/44
    # the best is 14/20 = 0.7 at t = 0.6 (16/23 = 0.696 at 0.5 is close behind)
    dice, threshold = best_dice(maps, masks)
    assert dice == pytest.approx(0.7, abs=1e-12)
    assert threshold == 0.6
    # the Dice of the thresholded map itself, written out
    pred, gt = maps >= threshold, masks == 1
    assert dice == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()), abs=1e-12)


def test_pro_curve_and_aupro_by_hand():
    maps, masks = _hand_fixture()
    # 8-connectivity: regions A (4 px) and B (8 px), R = 2; a region pixel adds 1 / (R |region|) to PRO:
    # A pixels 1/8, B pixels 1/16. FPR counts normal pixels out of 20.
    #   t = 0.9: PRO 1/8            FPR 0
    #   t = 0.8: PRO 1/8 + 4/16 = 3/8
    #   t = 0.7:                    FPR 1/20 = 0.05
    #   t = 0.6: PRO 3/8 + 2/8 = 5/8
    #   t = 0.5: PRO 6/8            FPR 3/20 = 0.15
    #   t = 0.4:                    FPR 7/20 = 0.35
    #   t = 0.0: PRO 1              FPR 1
    fpr, pro, thresholds = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.05, 0.05, 0.15, 0.35, 1], atol=1e-12)
    np.testing.assert_allclose(pro, [0, 1 / 8, 3 / 8, 3 / 8, 5 / 8, 6 / 8, 6 / 8, 1], atol=1e-12)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0])
    # up to FPR 0.3: 0.05 * 3/8 + 0.1 * (5/8 + 6/8) / 2 + (0.3 - 0.15) * 6/8 (PRO flat from 0.15 to 0.35, the value
    # interpolated at 0.3 is 6/8) = 0.01875 + 0.06875 + 0.1125 = 0.2; / 0.3 = 2/3.
    # (4-connectivity would split B into two 4 px regions, R = 3: 2.2/12 / 0.3 = 11/18 instead.)
    assert aupro(maps, masks) == pytest.approx(2 / 3, abs=1e-12)
    # up to FPR 0.1, interpolating inside a rising segment: PRO(0.1) = 5/8 + (6/8 - 5/8) * 0.05 / 0.1 = 0.6875;
    # 0.01875 + 0.05 * (0.625 + 0.6875) / 2 = 0.0515625; / 0.1 = 0.515625
    assert aupro(maps, masks, fpr_limit=0.1) == pytest.approx(0.515625, abs=1e-12)
    # the whole curve: 0.01875 + 0.06875 + 0.2 * 6/8 + 0.65 * (6/8 + 1) / 2 = 0.80625
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.80625, abs=1e-12)
    # a list of (H, W) arrays (bool masks, float32 maps) gives the same values
    as_list = [m.astype(np.float32) for m in maps], [m.astype(bool) for m in masks]
    assert aupro(*as_list) == pytest.approx(2 / 3, abs=1e-7)
    assert best_dice(*as_list)[0] == pytest.approx(0.7, abs=1e-12)


def test_pixel_metrics_reject_bad_input():
    maps, masks = _hand_fixture()
    with pytest.raises(ValueError, match="shape"):
        aupro(maps, masks[:, :3])
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        best_dice(maps, masks[:1])
    with pytest.raises(ValueError, match="no anomalous pixel"):
        pixel_average_precision(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="no anomalous pixel"):
        aupro(maps, np.zeros_like(masks))
    bad = maps.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        best_dice(bad, masks)
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        aupro(maps, masks * 255)
    for limit in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            aupro(maps, masks, fpr_limit=limit)
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match="\\(N, H, W\\)"):
        aupro(maps[0], masks[0])


def _mvtec_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """MVTec AD's ``trapezoid(x, y, x_max)`` (official evaluation code), transcribed."""
    correction = 0.0
    if x_max not in x:
        ins = bisect(list(x), x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _slow_reference(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> tuple[float, float, float]:
    """AUPRO, best Dice and AP by their definitions, one threshold at a time (every distinct map value)."""
    gt = masks.astype(bool)
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in gt]
    sizes = [np.bincount(lab.ravel())[1:] for lab in labelled]
    fprs, pros, dices, precisions, recalls = [0.0], [0.0], [], [], []
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        overlaps = [np.bincount(lab[p], minlength=s.size + 1)[1:] / s for lab, p, s in zip(labelled, pred, sizes)]
        pros.append(float(np.concatenate(overlaps).mean()))
        fprs.append(float((pred & ~gt).sum() / (~gt).sum()))
        tp = (pred & gt).sum()
        dices.append(2 * tp / (pred.sum() + gt.sum()))
        precisions.append(tp / pred.sum())
        recalls.append(tp / gt.sum())
    area = _mvtec_trapezoid(np.array(fprs), np.array(pros), fpr_limit) / fpr_limit
    ap = float(np.sum(np.diff(np.r_[0.0, recalls]) * np.array(precisions)))
    return area, float(max(dices)), ap


def _random_fixture(seed: int, n: int = 10, size: int = 48, levels: int | None = None) -> tuple[np.ndarray, ...]:
    """Images with 0-3 rectangular lesions each (overlapping ones merge into one region), maps = noise + lesion
    signal as float32, optionally quantised to few values (many ties)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            r, c = rng.integers(0, size - 12, 2)
            h, w = rng.integers(1, 12, 2)
            masks[i, r : r + h, c : c + w] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    if levels is not None:
        maps = np.round(maps * levels / 8.0)
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("levels", [None, 12])
def test_pixel_metrics_match_a_slow_reference(levels):
    maps, masks = _random_fixture(1, n=6, size=24, levels=levels)
    for limit in (0.3, 0.02):
        area, dice, ap = _slow_reference(maps, masks, limit)
        assert aupro(maps, masks, limit) == pytest.approx(area, abs=1e-12)
    assert best_dice(maps, masks)[0] == pytest.approx(dice, abs=1e-12)
    assert pixel_average_precision(maps, masks) == pytest.approx(ap, abs=1e-12)


@pytest.mark.parametrize("levels", [None, 20])
def test_aupro_matches_anomalib(levels):
    torch = pytest.importorskip("torch")
    pytest.importorskip("anomalib")
    from anomalib.metrics import AUPRO

    maps, masks = _random_fixture(0, n=12, size=64, levels=levels)
    assert sum(ndimage.label(m, structure=np.ones((3, 3)))[1] for m in masks) > 5  # several regions
    for limit in (0.3, 0.05, 1.0):
        metric = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=limit)
        metric.update(types.SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks).int()))
        # anomalib builds the same exact curve (every distinct score, ties merged, 8-connected regions from
        # cv2.connectedComponents, the point at the limit interpolated, area / limit) but in float32: its
        # cumulative sums and its limit float32(0.3) differ from ours in the 8th digit (measured: at most 1.0e-7
        # on these fixtures), hence 1e-6
        assert aupro(maps, masks, limit) == pytest.approx(float(metric.compute()), abs=1e-6)


def test_two_million_pixels_match_the_definition():
    """32 images of 256x256 (2.1 million pixels) with maps on 40 levels, so that the slow threshold-by-threshold
    reference stays short; the vectorised metrics must agree with it exactly."""
    rng = np.random.default_rng(7)
    masks = np.zeros((32, 256, 256), dtype=bool)
    masks[::2, 100:140, 50:90] = True
    masks[1::4, 10:14, 10:200] = True
    masks[3::4, 200:203, 200:203] = True
    masks[::3, 60:61, 60:61] = True  # single-pixel regions
    maps = np.round(rng.normal(size=masks.shape) + 2.0 * masks, 1).clip(-2, 2).astype(np.float32)
    assert np.unique(maps).size <= 41
    area, dice, ap = _slow_reference(maps, masks, 0.3)
    assert aupro(maps, masks) == pytest.approx(area, abs=1e-10)
    assert best_dice(maps, masks)[0] == pytest.approx(dice, abs=1e-12)
    assert pixel_average_precision(maps, masks) == pytest.approx(ap, abs=1e-12)


def _run_handler(items: list[tuple[np.ndarray, np.ndarray, int]]):
    """PixelMetrics on an Ignite engine whose decollated output holds the maps and whose batch holds the masks."""
    import torch
    from ignite.engine import Engine

    from medad_monai.handlers.pixel_metrics import PixelMetrics

    def step(engine, item):
        amap, mask, label = item
        engine.state.batch = [{"mask": torch.as_tensor(mask)[None]}]
        return [{"pred": torch.as_tensor(amap)[None], "label": torch.tensor(label)}]

    engine, handler = Engine(step), PixelMetrics()
    handler.attach(engine)
    engine.run(items, max_epochs=1)
    return engine.state.metrics, handler


def test_pixel_metrics_handler_by_hand():
    maps, masks = _hand_fixture()
    metrics, handler = _run_handler([(maps[i], masks[i], 1) for i in range(2)])
    # AUROC: pairs (lesion, normal) won, ties one half: 0.9: 20; 0.8: 4 x 20; 0.6: 2 x 19 (all but 0.7);
    # 0.5: 17 + 2/2 = 18; 0.0: 4 x 13/2 = 26 -> 182 of 12 x 20 = 240
    assert metrics["pixel_auroc"] == pytest.approx(182 / 240, abs=1e-12)
    assert metrics["pixel_ap"] == pytest.approx(395 / 528, abs=1e-7)
    assert metrics["pixel_best_dice"] == pytest.approx(0.7, abs=1e-12)
    assert metrics["pixel_best_dice_threshold"] == pytest.approx(0.6, abs=1e-7)  # 0.6 as float32
    assert metrics["pixel_aupro"] == pytest.approx(2 / 3, abs=1e-7)
    assert handler.maps[0].dtype == np.float32 and handler.maps[0].shape == (4, 4)
    assert handler.masks[0].dtype == bool
    # an anomalous image without a lesion mask: no pixel ground truth, every metric is left out
    metrics, _ = _run_handler([(maps[0], masks[0], 1), (maps[1], np.zeros((4, 4)), 1)])
    names = ("auroc", "ap", "best_dice", "best_dice_threshold", "aupro")
    assert all(np.isnan(metrics[f"pixel_{name}"]) for name in names)
