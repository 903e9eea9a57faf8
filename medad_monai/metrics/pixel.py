"""Exact pixel-level (localisation) metrics of anomaly maps against binary lesion masks, vectorised over pixels.

All pixels of all images are pooled, as the localisation results of MVTec AD and MedIAnomaly are reported:

- :func:`pixel_average_precision`: the average precision of the pooled pixels (scikit-learn's definition, through
  :func:`medad_monai.metrics.ranking.average_precision`).
- :func:`best_dice`: the best Dice over thresholds, as MedIAnomaly (Cai et al., "MedIAnomaly: A comparative
  study of anomaly detection in medical images", 2024) reports it for pixel-level BraTS results: the lesion is
  ``map >= t``, Dice = 2TP / (2TP + FP + FN) over the pooled pixels, maximised over every distinct map value ``t``.
  As FN = P - TP, this is the pooled pixel F1-max (:func:`medad_monai.metrics.ranking.f1_max`, exact).
- :func:`aupro`: the normalised area under the per-region-overlap curve up to a false positive rate of 0.3
  (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, and the official evaluation code's
  ``compute_pro`` and ``trapezoid``). The regions are the 8-connected components of each ground-truth mask (the
  official code labels with the 3x3 structuring element ``np.ones((3, 3))``; anomalib's ``cv2.connectedComponents``
  uses connectivity 8 by default). At a threshold ``t``, PRO(t) is the mean over all regions of all images of the
  fraction of the region's pixels with ``map >= t``, and FPR(t) the fraction of the normal pixels (outside every
  region, in all images, normal images included) with ``map >= t``.

Every threshold is exact (no grid): pixels are sorted once by decreasing score and the counts are cumulative sums
read at the end of each group of tied scores (one threshold per distinct value), so two million pixels take about a
second on a CPU. Maps may come as an ``(N, H, W)`` array or a list of ``(H, W)`` arrays (the images may then differ in
size); the masks must have the same shapes and hold 0/1 (or bool) values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medad_monai.metrics.ranking import average_precision, f1_max

__all__ = ["aupro", "best_dice", "pixel_average_precision", "pro_curve"]

# 8-connectivity, the structuring element of MVTec AD's compute_pro (and cv2's default connectivity in anomalib)
_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)

ArrayOrList = np.ndarray | Sequence[np.ndarray]


def _check_pixels(maps: ArrayOrList, masks: ArrayOrList) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps as floating ``(H, W)`` arrays (float32 kept as is, to keep memory modest) and masks as bool ``(H, W)``
    arrays, one per image; a clear error on mismatched shapes, non-binary masks, non-finite values or no anomalous
    pixel at all (the metrics are then undefined)."""
    map_list = list(maps) if not isinstance(maps, np.ndarray) or maps.ndim == 3 else None
    mask_list = list(masks) if not isinstance(masks, np.ndarray) or masks.ndim == 3 else None
    if map_list is None or mask_list is None:
        raise ValueError("maps and masks must be (N, H, W) arrays or lists of (H, W) arrays")
    if len(map_list) != len(mask_list):
        raise ValueError(f"{len(map_list)} maps but {len(mask_list)} masks")
    if not map_list:
        raise ValueError("no images")
    out_maps, out_masks = [], []
    for i, (amap, mask) in enumerate(zip(map_list, mask_list)):
        amap, mask = np.asarray(amap), np.asarray(mask)
        if amap.ndim != 2 or amap.shape != mask.shape:
            raise ValueError(f"image {i}: map of shape {amap.shape} and mask of shape {mask.shape} (need equal (H, W))")
        if not np.issubdtype(amap.dtype, np.floating):
            amap = amap.astype(np.float64)
        if not np.isfinite(amap).all():
            raise ValueError(f"image {i}: the map contains NaN or infinite values")
        if mask.dtype != bool:
            # refuse e.g. 0/255 masks rather than guess which value is the lesion
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError(f"image {i}: the mask must hold 0 (normal) or 1 (anomalous) values")
            mask = mask == 1
        out_maps.append(amap)
        out_masks.append(mask)
    if not any(m.any() for m in out_masks):
        raise ValueError("the masks hold no anomalous pixel: pixel AP, Dice and AUPRO are undefined")
    return out_maps, out_masks


def _pooled(maps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All pixels of all images, flat: scores and bool labels."""
    return np.concatenate([m.ravel() for m in maps]), np.concatenate([m.ravel() for m in masks])


def pixel_average_precision(maps: ArrayOrList, masks: ArrayOrList) -> float:
    """Average precision of all pixels pooled, AP = sum_k (R_k - R_{k-1}) P_k over distinct map values."""
    scores, labels = _pooled(*_check_pixels(maps, masks))
    return average_precision(scores, labels)


def best_dice(maps: ArrayOrList, masks: ArrayOrList) -> tuple[float, float]:
    """The best Dice 2TP / (2TP + FP + FN) of ``map >= t`` over every distinct map value ``t`` (pixels pooled), and
    the threshold reaching it (MedIAnomaly's "best Dice" for BraTS).

    Dice equals F1 (2TP / (TP + FP + P) with P = TP + FN the lesion pixels), so this is the pooled pixel F1-max of
    :func:`medad_monai.metrics.ranking.f1_max`; tied map values form one threshold.
    """
    scores, labels = _pooled(*_check_pixels(maps, masks))
    return f1_max(scores, labels)


def _region_weights(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel ``1 / |region|`` for pixels of an 8-connected region of ``mask`` (0 elsewhere), flat, and the number
    of regions: summing the weights of the pixels at or above a threshold gives the sum of the regions' overlaps."""
    labeled, n_regions = ndimage.label(mask, structure=_CONNECTIVITY_8)
    sizes = np.bincount(labeled.ravel(), minlength=n_regions + 1)
    inverse = np.zeros(n_regions + 1)
    inverse[1:] = 1.0 / sizes[1:]
    return inverse[labeled.ravel()], n_regions


def pro_curve(maps: ArrayOrList, masks: ArrayOrList) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The PRO curve of MVTec AD's ``compute_pro``: FPR and PRO at every distinct map value (decreasing), starting
    at (0, 0), and the thresholds (``inf`` first).

    PRO(t) = (1/R) sum_regions |{p in region: map(p) >= t}| / |region| over the R 8-connected regions of all masks,
    FPR(t) = |{normal p: map(p) >= t}| / |normal pixels|. Sorting the pixels by decreasing score, PRO(t) is the
    cumulative sum of the weights 1 / (R |region(p)|) (0 for normal pixels) read at the last pixel of each group of
    tied scores, and FPR(t) the cumulative count of normal pixels over their number.
    """
    amaps, gts = _check_pixels(maps, masks)
    scores = np.concatenate([m.ravel() for m in amaps])
    weighted = [_region_weights(g) for g in gts]  # one labelling per image, vectorised within it
    weights = np.concatenate([w for w, _ in weighted])
    n_regions = sum(n for _, n in weighted)
    normal = weights == 0.0  # region pixels have weight 1 / |region| > 0
    n_normal = int(normal.sum())
    if n_normal == 0:
        raise ValueError("the masks cover every pixel: no normal pixel, the false positive rate is undefined")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    last_of_tie = np.r_[np.nonzero(np.diff(sorted_scores))[0], scores.size - 1]
    pro = np.cumsum(weights[order])[last_of_tie] / n_regions
    # float64 sums of many 1/|region| may overshoot 1 by rounding; the official code clips as well
    np.clip(pro, None, 1.0, out=pro)
    # integer counts: FPR is exact and ends at exactly 1
    fpr = np.cumsum(normal[order])[last_of_tie] / n_normal
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, sorted_scores[last_of_tie]]


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under ``y(x)`` (``x`` non-decreasing, from 0) from 0 to ``x_max``, ``y`` interpolated
    linearly at ``x_max`` when it falls between two points (MVTec AD's ``trapezoid(x, y, x_max)``)."""
    k = int(np.searchsorted(x, x_max, side="right"))  # the points with x <= x_max
    area = float(np.sum(np.diff(x[:k]) * (y[1:k] + y[: k - 1])) / 2.0)
    if x[k - 1] < x_max:
        # x ends at 1 >= x_max, so a point x[k] > x_max exists: interpolate between the last point before and it
        y_max = y[k - 1] + (y[k] - y[k - 1]) * (x_max - x[k - 1]) / (x[k] - x[k - 1])
        area += (x_max - x[k - 1]) * (y[k - 1] + y_max) / 2.0
    return area


def aupro(maps: ArrayOrList, masks: ArrayOrList, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve (:func:`pro_curve`) from FPR 0 to ``fpr_limit`` by the trapezoid rule, divided by
    ``fpr_limit`` so that a perfect map scores 1 (MVTec AD's AU-PRO, the official ``calculate_au_pro``)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro, _ = pro_curve(maps, masks)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit
