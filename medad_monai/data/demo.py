"""Embedded demo data: small, medical-looking 2D anomaly-detection datasets generated on first use.

Nothing here is downloaded or committed. Each *domain* is a procedural phantom family that looks like one imaging
task (brain MR, head CT, chest X-ray, retinal fundus, abdominal CT); normals vary in anatomy, pose and texture, and
anomalies are lesions of varied size, contrast and shape with pixel masks. Every domain is written in the folder
layout the readers expect::

    <root>/<domain>/train/good/*.png        known normals
    <root>/<domain>/train/unlabeled/*.png   unlabeled pool (normals + anomalies at a known rate, DDAD's UDM)
    <root>/<domain>/test/good/*.png
    <root>/<domain>/test/bad/*.png
    <root>/<domain>/ground_truth/bad/*.png  lesion masks (same stem as test/bad)
    <root>/<domain>/dataset.json            counts, anomaly rate, seed, generator version, pool labels

The several domains are what D²4FAD's leave-one-dataset-out training needs. Generation is deterministic in
``(domain, seed, sizes)``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from medad_monai.io import atomic_write_json, umask

__all__ = [
    "DEMO_DOMAINS",
    "DemoSpec",
    "demo_root",
    "ensure_demo_domain",
    "generate_demo_data",
    "resolve_dataset_dir",
]

logger = logging.getLogger("medad_monai")

# Bumped whenever generated images change, so a cached older copy is never reused (v2: larger brain_mr lesions;
# v3: subjects differ in pose, shape, scanner intensity and noise; lesions take tissue-like intensities).
GENERATOR_VERSION = 3
# Part of the RNG seed; kept fixed across versions so unchanged domains keep their images.
_RNG_STREAM = 1
DEMO_PREFIX = "demo:"


@dataclass(frozen=True)
class DemoSpec:
    """Sizes of one generated domain."""

    image_size: int = 128
    n_train: int = 80
    n_unlabeled: int = 48
    unlabeled_anomaly_rate: float = 0.5
    n_test_good: int = 32
    n_test_bad: int = 32
    seed: int = 0


# ----------------------------------------------------------------------------------------------- primitives
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return (y - n / 2) / (n / 2), (x - n / 2) / (n / 2)


def _ellipse(n: int, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    y, x = _grid(n)
    c, s = np.cos(angle), np.sin(angle)
    yr, xr = c * (y - cy) + s * (x - cx), -s * (y - cy) + c * (x - cx)
    return ((yr / ry) ** 2 + (xr / rx) ** 2).astype(np.float32)  # < 1 inside


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


def _soft(inside: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Soft indicator of ``inside < 1`` for an ellipse level set."""
    return 1.0 / (1.0 + np.exp(np.clip((inside - 1.0) / width, -60.0, 60.0)))


def _wobble(rng: np.random.Generator, n: int, amplitude: float, sigma: float) -> np.ndarray:
    """A smooth factor around 1 that makes an ellipse level set's outline irregular and different per subject."""
    return (1.0 + amplitude * _smooth_noise(rng, n, sigma)).astype(np.float32)


def _lines(rng: np.random.Generator, n: int, sigma: float, width: float) -> np.ndarray:
    """Thin curvy lines (sulci, folds): where a smooth noise field crosses zero."""
    return np.exp(-((_smooth_noise(rng, n, sigma) / width) ** 2)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class SubjectVariation:
    """How subjects of one domain differ beyond their anatomy: pose, shape, scanner intensity and noise.

    Attributes:
        shift: largest translation, as a fraction of the width.
        rotation: largest in-plane rotation, radians.
        scale: range of the isotropic scale factor.
        elastic: amplitude of a smooth elastic deformation, as a fraction of the width.
        bias: amplitude of a smooth multiplicative intensity field (MR coil bias, X-ray exposure, fundus vignetting).
        gain: range of the global intensity gain.
        noise: range of the standard deviation of the acquisition noise (intensities in [0, 1]).
    """

    shift: float = 0.05
    rotation: float = 0.15
    scale: tuple[float, float] = (0.92, 1.08)
    elastic: float = 0.012
    bias: float = 0.0
    gain: tuple[float, float] = (0.95, 1.05)
    noise: tuple[float, float] = (0.01, 0.02)


def _subject_coordinates(rng: np.random.Generator, n: int, var: SubjectVariation) -> np.ndarray:
    """Sampling coordinates ``(2, n, n)`` of one subject's pose: rotation, scale, translation and elastic warp."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) - (n - 1) / 2
    a = rng.uniform(-var.rotation, var.rotation)
    s = rng.uniform(*var.scale)
    ty, tx = rng.uniform(-var.shift, var.shift, size=2) * n
    c, si = np.cos(a) / s, np.sin(a) / s
    sy = c * (y - ty) - si * (x - tx) + (n - 1) / 2
    sx = si * (y - ty) + c * (x - tx) + (n - 1) / 2
    if var.elastic > 0:
        sy = sy + var.elastic * n * _smooth_noise(rng, n, n / 8)
        sx = sx + var.elastic * n * _smooth_noise(rng, n, n / 8)
    return np.stack([sy, sx])


def _resample(field: np.ndarray, coords: np.ndarray, mode: str = "nearest") -> np.ndarray:
    return ndimage.map_coordinates(field, coords, order=1, mode=mode).astype(np.float32)


def _acquire(
    rng: np.random.Generator,
    img: np.ndarray,
    var: SubjectVariation,
    foreground: np.ndarray,
    bias_field: np.ndarray | None = None,
    noise_std: float | None = None,
) -> np.ndarray:
    """Scanner effects on the (warped, possibly lesioned) anatomy: bias field, gain and noise inside the body.

    ``bias_field`` (unit standard deviation) and ``noise_std`` are drawn here unless given: the sections of one volume
    share the scanner's smooth 3D field and noise level (:mod:`medad_monai.data.demo_volumes`).
    """
    n = img.shape[0]
    if bias_field is None and var.bias > 0:
        bias_field = _smooth_noise(rng, n, n / 4)
    if bias_field is not None:
        img = img * (1.0 + var.bias * bias_field)
    img = img * rng.uniform(*var.gain)
    std = rng.uniform(*var.noise) if noise_std is None else noise_std
    return img + std * rng.standard_normal((n, n)).astype(np.float32) * foreground


# ----------------------------------------------------------------------------------------------- normal anatomy
# Each returns the canonical image (intensities in [0, 1]), the organ where lesions may appear, the body foreground
# (where acquisition noise lives) and a dict of tissue intensities the lesion recipes refer to.
Tissue = dict[str, float]
Anatomy = tuple[np.ndarray, np.ndarray, np.ndarray, Tissue]
Lesioned = tuple[np.ndarray, np.ndarray]  # image with lesions, boolean lesion mask


def _brain_mr(rng: np.random.Generator, n: int) -> Anatomy:
    """Axial T2-like brain: scalp, bright CSF rim, folded cortex with bright sulci, darker white matter, ventricles."""
    ry, rx = rng.uniform(0.78, 0.88), rng.uniform(0.62, 0.72)
    wob = _wobble(rng, n, 0.03, n / 10)
    head = _soft(_ellipse(n, 0, 0, ry, rx) * wob, 0.03)
    inner = _soft(_ellipse(n, 0, 0, ry - 0.045, rx - 0.045) * wob, 0.03)
    brain_ls = _ellipse(n, 0.01, 0, ry - 0.085, rx - 0.085) * wob * _wobble(rng, n, 0.04, n / 20)
    brain = _soft(brain_ls, 0.04)
    gm, wm_level, csf = rng.uniform(0.45, 0.52), rng.uniform(0.28, 0.34), rng.uniform(0.72, 0.82)
    img = 0.3 * (head - inner).clip(0) + csf * (inner - brain).clip(0) + gm * brain
    wm = _soft(_ellipse(n, 0.02, 0, ry - 0.24, rx - 0.2) * _wobble(rng, n, 0.15, n / 14), 0.08)
    img -= (gm - wm_level) * wm * brain
    img += (csf - gm) * 0.8 * _lines(rng, n, rng.uniform(2.0, 3.0), 0.15) * brain * (1 - wm)  # sulci
    size = rng.uniform(0.7, 1.4)
    vents = np.zeros((n, n), np.float32)
    for side in (-1, 1):
        v = _ellipse(
            n,
            -0.05 + rng.uniform(-0.02, 0.02),
            side * rng.uniform(0.07, 0.11),
            0.2 * size * rng.uniform(0.85, 1.15),
            0.045 * size,
            side * 0.35,
        )
        vents = np.maximum(vents, _soft(v, 0.15))
    img += (csf - wm_level) * vents * brain
    img += 0.03 * _smooth_noise(rng, n, 1.0) * brain
    organ = (brain_ls < 0.8) & (vents < 0.2)
    return img, organ, head, {"csf": csf, "gm": gm, "wm": wm_level}


def _head_ct(rng: np.random.Generator, n: int) -> Anatomy:
    """Non-contrast head CT: bright skull of varying thickness, brain with sulci, dark ventricles."""
    ry, rx = rng.uniform(0.8, 0.9), rng.uniform(0.65, 0.75)
    wob = _wobble(rng, n, 0.025, n / 10)
    outer = _soft(_ellipse(n, 0, 0, ry, rx) * wob, 0.03)
    thick = rng.uniform(0.05, 0.1) * _wobble(rng, n, 0.2, n / 8)
    inner_ls = _ellipse(n, 0, 0, ry - 0.08, rx - 0.08) * wob * (1 + (thick - 0.075))
    inner = _soft(inner_ls, 0.03)
    brain_v = rng.uniform(0.4, 0.45)
    img = 0.9 * (outer - inner).clip(0) + brain_v * inner
    img -= 0.07 * _lines(rng, n, rng.uniform(2.5, 3.5), 0.12) * _soft(_ellipse(n, 0, 0, ry - 0.12, rx - 0.12), 0.05)
    size = rng.uniform(0.6, 1.5)
    vents = np.zeros((n, n), np.float32)
    for side in (-1, 1):
        v = _ellipse(n, -0.04, side * rng.uniform(0.07, 0.1), 0.18 * size, 0.04 * size, side * 0.3)
        vents = np.maximum(vents, _soft(v, 0.15))
    img -= (brain_v - 0.15) * vents * inner
    img += 0.025 * _smooth_noise(rng, n, 0.7) * inner
    organ = (inner_ls < 0.78) & (vents < 0.2)
    return img, organ, outer, {"brain": brain_v, "bone": 0.9}


def _chest_xray(rng: np.random.Generator, n: int) -> Anatomy:
    """Frontal chest radiograph: bright body, dark lungs with vessel markings, ribs, clavicles, heart, spine."""
    body = _soft(_ellipse(n, 0.1, 0, 1.05, rng.uniform(0.85, 0.95)) * _wobble(rng, n, 0.03, n / 8), 0.1)
    img = 0.55 * body
    lungs = np.zeros((n, n), np.float32)
    for side in (-1, 1):
        ly = _ellipse(
            n, rng.uniform(-0.12, 0.0), side * rng.uniform(0.36, 0.45), rng.uniform(0.52, 0.66), rng.uniform(0.24, 0.3)
        ) * _wobble(rng, n, 0.08, n / 10)
        lungs = np.maximum(lungs, _soft(ly, 0.06))
    darkness = rng.uniform(0.3, 0.4)
    img -= darkness * lungs
    img += 0.06 * _lines(rng, n, 1.5, 0.25) * lungs * _soft(_ellipse(n, 0.0, 0, 0.5, 0.5), 0.3)  # vessel markings
    y, x = _grid(n)
    ribs = np.sin((y + rng.uniform(0.2, 0.3) * x**2) * rng.uniform(12, 17) + rng.uniform(0, np.pi)) > 0.7
    img += 0.08 * ndimage.gaussian_filter(ribs.astype(np.float32), 1.0) * lungs
    for side in (-1, 1):  # clavicles
        img += 0.1 * _soft(_ellipse(n, -0.62 + 0.1 * np.abs(x + side * 0.3), side * 0.3, 0.04, 0.32), 0.2)
    heart = _soft(_ellipse(n, 0.3, rng.uniform(0.04, 0.16), rng.uniform(0.26, 0.34), rng.uniform(0.24, 0.32)), 0.08)
    img += 0.3 * heart
    img += 0.2 * _soft(_ellipse(n, -0.4, 0, 0.6, 0.08), 0.1)  # mediastinum / spine
    img += 0.03 * _smooth_noise(rng, n, 2.0)
    organ = (lungs > 0.7) & (heart < 0.3)
    return img, organ, np.ones((n, n), np.float32), {"lung": 0.55 - darkness, "soft": 0.55}


def _fundus(rng: np.random.Generator, n: int) -> Anatomy:
    """Retinal fundus (green channel): bright disc on the side, dark branching vessels, dark macula."""
    field = _soft(_ellipse(n, 0, 0, 0.92, 0.92), 0.04)
    side = rng.choice([-1, 1])
    dy, dx = rng.uniform(-0.12, 0.12), side * rng.uniform(0.32, 0.46)
    base = rng.uniform(0.45, 0.55)
    img = base * field
    img += 0.4 * _soft(_ellipse(n, dy, dx, 0.12, 0.1), 0.15)
    img -= 0.15 * _soft(_ellipse(n, rng.uniform(-0.05, 0.05), -side * 0.1, 0.15, 0.15), 0.4)  # macula
    y, x = _grid(n)
    vessels = np.zeros((n, n), np.float32)
    for _ in range(rng.integers(6, 10)):
        theta = rng.uniform(0, 2 * np.pi)
        curl = rng.uniform(-1.2, 1.2)
        r = np.sqrt((y - dy) ** 2 + (x - dx) ** 2)
        a = np.arctan2(y - dy, x - dx) - theta - curl * r
        width = rng.uniform(0.01, 0.025) * (1.2 - r).clip(0.2)
        vessels = np.maximum(vessels, np.exp(-((r * np.sin(a)) ** 2) / (2 * width**2)) * (np.cos(a) > 0))
    img -= 0.22 * vessels * field
    img += 0.02 * _smooth_noise(rng, n, 1.0) * field
    organ = (_ellipse(n, 0, 0, 0.8, 0.8) < 1) & (_ellipse(n, dy, dx, 0.2, 0.2) > 1) & (vessels < 0.3)
    return img, organ, field, {"retina": base}


def _abdomen_ct(rng: np.random.Generator, n: int) -> Anatomy:
    """Axial abdominal CT: body with fat rim, liver, spine, kidneys, aorta, bowel texture."""
    body_ls = _ellipse(n, 0.05, 0, rng.uniform(0.6, 0.72), rng.uniform(0.82, 0.95)) * _wobble(rng, n, 0.03, n / 8)
    body = _soft(body_ls, 0.04)
    muscle = _soft(body_ls / rng.uniform(0.78, 0.88), 0.05)
    img = 0.25 * body + 0.2 * muscle
    img += 0.05 * _lines(rng, n, 2.0, 0.3) * muscle * _soft(_ellipse(n, 0.0, 0.3, 0.35, 0.4), 0.1)  # bowel
    liver_v = rng.uniform(0.1, 0.15)
    liver_ls = _ellipse(
        n, -0.05, -rng.uniform(0.28, 0.4), rng.uniform(0.34, 0.44), rng.uniform(0.28, 0.38), rng.uniform(0.2, 0.4)
    ) * _wobble(rng, n, 0.08, n / 10)
    liver = _soft(liver_ls, 0.05)
    img += liver_v * liver
    img += 0.5 * _soft(_ellipse(n, 0.45, 0, 0.12, 0.11), 0.05)  # vertebral body
    for side in (-1, 1):
        img += 0.15 * _soft(_ellipse(n, 0.3, side * rng.uniform(0.28, 0.36), 0.14, 0.09, side * 0.4), 0.06)
    img += 0.3 * _soft(_ellipse(n, 0.25, 0.08, 0.05, 0.05), 0.1)  # aorta
    img += 0.03 * _smooth_noise(rng, n, 1.2) * body
    organ = liver_ls < 0.8
    return img, organ, body, {"liver": 0.45 + liver_v, "fat": 0.25}


# ----------------------------------------------------------------------------------------------- lesions
def _lesion_mask(rng: np.random.Generator, n: int, region: np.ndarray, r_min: float, r_max: float) -> np.ndarray:
    """An irregular blob (thresholded smooth noise inside a disc) centred inside ``region`` (a boolean mask)."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        raise ValueError("demo: empty organ region for a lesion")
    i = rng.integers(len(ys))
    radius = rng.uniform(r_min, r_max) * n
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    dist = np.sqrt((y - ys[i]) ** 2 + (x - xs[i]) ** 2) / radius
    wobble = _smooth_noise(rng, n, sigma=max(radius / 3, 1.0)) * 0.35
    mask = (dist + wobble) < 1.0
    mask &= region
    if mask.sum() < 6:  # too small after clipping to the organ: fall back to the plain disc
        mask = (dist < 1.0) & region
    return mask


def _blend(
    rng: np.random.Generator,
    img: np.ndarray,
    mask: np.ndarray,
    target: float,
    strength: float,
    blur: float = 1.0,
    texture: float = 0.12,
) -> np.ndarray:
    """Pull the intensity inside ``mask`` towards a tissue-like ``target`` (with its own texture), by ``strength``.

    Lesions take intensities that normal tissue also has (a T2 lesion as bright as CSF, a hypodense infarct), so a
    method must know *where* an intensity is normal, not only *which* intensities are.
    """
    soft = ndimage.gaussian_filter(mask.astype(np.float32), blur) * strength
    tissue = target * (1.0 + texture * _smooth_noise(rng, img.shape[0], 1.5))
    return img + soft * (tissue - img)


def _mass_effect(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """Push the anatomy around a lesion outwards (a space-occupying lesion displaces ventricles and sulci)."""
    n = img.shape[0]
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    radius = max(np.sqrt(mask.sum() / np.pi), 2.0)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    d2 = ((y - cy) ** 2 + (x - cx) ** 2) / (2.5 * radius) ** 2
    pull = strength * np.exp(-d2)  # sample closer to the centre: structures appear pushed out
    return _resample(img, np.stack([y - pull * (y - cy), x - pull * (x - cx)]))


def _brain_lesion(rng: np.random.Generator, img: np.ndarray, organ: np.ndarray, t: Tissue) -> Lesioned:
    n = img.shape[0]
    kind = rng.choice(["tumour", "white_matter", "haemorrhage"], p=[0.5, 0.3, 0.2])
    if kind == "tumour":  # space-occupying, CSF-bright oedema halo, heterogeneous core
        core = _lesion_mask(rng, n, organ, 0.08, 0.16)
        img = _mass_effect(rng, img, core, rng.uniform(0.2, 0.4))
        halo = ndimage.binary_dilation(core, iterations=int(rng.integers(3, 7))) & organ
        img = _blend(rng, img, halo, t["csf"] * rng.uniform(0.85, 1.0), rng.uniform(0.6, 0.9), 1.5)
        img = _blend(rng, img, core, rng.uniform(t["wm"], t["gm"]), rng.uniform(0.7, 0.95), texture=0.3)
        return img, halo
    if kind == "white_matter":  # two to four plaques, CSF-like brightness inside darker white matter
        mask = np.zeros((n, n), bool)
        for _ in range(rng.integers(2, 5)):
            m = _lesion_mask(rng, n, organ, 0.05, 0.1)
            img = _blend(rng, img, m, t["csf"] * rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.0))
            mask |= m
        return img, mask
    m = _lesion_mask(rng, n, organ, 0.06, 0.12)  # T2-dark blood products
    return _blend(rng, img, m, rng.uniform(0.05, 0.15), rng.uniform(0.7, 0.95), texture=0.25), m


def _head_ct_lesion(rng: np.random.Generator, img: np.ndarray, organ: np.ndarray, t: Tissue) -> Lesioned:
    n = img.shape[0]
    if rng.random() < 0.55:  # hyperdense haemorrhage, below bone density, often with mass effect
        m = _lesion_mask(rng, n, organ, 0.06, 0.14)
        if rng.random() < 0.6:
            img = _mass_effect(rng, img, m, rng.uniform(0.15, 0.35))
        return _blend(rng, img, m, t["brain"] + rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.95)), m
    m = _lesion_mask(rng, n, organ, 0.08, 0.16)  # hypodense infarct
    return _blend(rng, img, m, t["brain"] - rng.uniform(0.1, 0.2), rng.uniform(0.7, 1.0), 2.0), m


def _chest_lesion(rng: np.random.Generator, img: np.ndarray, organ: np.ndarray, t: Tissue) -> Lesioned:
    n = img.shape[0]
    if rng.random() < 0.5:  # one to three nodules, soft-tissue density
        mask = np.zeros((n, n), bool)
        for _ in range(rng.integers(1, 4)):
            m = _lesion_mask(rng, n, organ, 0.045, 0.08)
            img = _blend(rng, img, m, t["soft"] * rng.uniform(0.75, 1.0), rng.uniform(0.7, 0.95), 1.2)
            mask |= m
        return img, mask
    m = _lesion_mask(rng, n, organ, 0.1, 0.16)  # consolidation: hazy, partial opacity
    return _blend(rng, img, m, t["soft"] * rng.uniform(0.8, 1.0), rng.uniform(0.5, 0.8), 2.5), m


def _fundus_lesion(rng: np.random.Generator, img: np.ndarray, organ: np.ndarray, t: Tissue) -> Lesioned:
    n = img.shape[0]
    mask = np.zeros((n, n), bool)
    bright = rng.random() < 0.5  # hard exudates (bright) or haemorrhages (dark), in clusters
    for _ in range(rng.integers(3, 8)):
        m = _lesion_mask(rng, n, organ, 0.025, 0.06)
        target = rng.uniform(0.75, 0.9) if bright else rng.uniform(0.15, 0.28)
        img = _blend(rng, img, m, target, rng.uniform(0.7, 0.95), 0.7)
        mask |= m
    return img, mask


def _abdomen_lesion(rng: np.random.Generator, img: np.ndarray, organ: np.ndarray, t: Tissue) -> Lesioned:
    n = img.shape[0]
    kind = rng.choice(["hypodense", "cyst", "hyperdense"], p=[0.5, 0.25, 0.25])
    if kind == "cyst":  # water density, sharp edge
        m = _lesion_mask(rng, n, organ, 0.05, 0.1)
        return _blend(rng, img, m, t["fat"] + rng.uniform(0.0, 0.06), rng.uniform(0.8, 0.95), 0.6), m
    m = _lesion_mask(rng, n, organ, 0.06, 0.12)
    shift = rng.uniform(0.1, 0.2) * (-1 if kind == "hypodense" else 1)
    return _blend(rng, img, m, t["liver"] + shift, rng.uniform(0.7, 0.95), 1.5, texture=0.2), m


Generator = Callable[[np.random.Generator, int], Anatomy]
LesionRecipe = Callable[[np.random.Generator, np.ndarray, np.ndarray, Tissue], Lesioned]

DEMO_DOMAINS: dict[str, tuple[Generator, LesionRecipe, SubjectVariation]] = {
    # name: (normal anatomy, lesion recipe, how subjects differ)
    "brain_mr": (_brain_mr, _brain_lesion, SubjectVariation(0.03, 0.1, (0.95, 1.05), 0.008, 0.15, (0.9, 1.1))),
    "head_ct": (_head_ct, _head_ct_lesion, SubjectVariation(0.03, 0.12, (0.95, 1.05), 0.008, 0.0, (0.97, 1.03))),
    "chest_xray": (
        _chest_xray,
        _chest_lesion,
        SubjectVariation(0.02, 0.04, (0.95, 1.05), 0.01, 0.12, (0.85, 1.15), (0.01, 0.025)),
    ),
    "fundus": (_fundus, _fundus_lesion, SubjectVariation(0.02, 0.15, (0.97, 1.03), 0.006, 0.12, (0.85, 1.15))),
    "abdomen_ct": (_abdomen_ct, _abdomen_lesion, SubjectVariation(0.03, 0.06, (0.95, 1.05), 0.01, 0.0, (0.97, 1.03))),
}


def _sample(domain: str, rng: np.random.Generator, n: int, abnormal: bool) -> tuple[np.ndarray, np.ndarray]:
    """One subject of ``domain``: anatomy, pose, lesions (if ``abnormal``), scanner effects; 8-bit image + mask."""
    anatomy, recipe, var = DEMO_DOMAINS[domain]
    img, organ, foreground, tissue = anatomy(rng, n)
    coords = _subject_coordinates(rng, n, var)
    img = _resample(img, coords)
    organ = _resample(organ.astype(np.float32), coords, "constant") > 0.5
    foreground = _resample(foreground.astype(np.float32), coords, "constant")
    mask = np.zeros((n, n), bool)
    if abnormal:
        img, mask = recipe(rng, img, organ, tissue)
    img = np.clip(_acquire(rng, img, var, foreground), 0.0, 1.0)
    return (img * 255).round().astype(np.uint8), mask


def _write_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def generate_domain(domain: str, out_dir: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> Path:
    """Write one domain in the folder layout to ``out_dir`` (overwriting nothing outside it)."""
    if domain not in DEMO_DOMAINS:
        raise ValueError(f"unknown demo domain {domain!r}; available: {sorted(DEMO_DOMAINS)}")
    out = Path(out_dir)
    seed = [spec.seed, _RNG_STREAM, *domain.encode()]
    rng = np.random.default_rng(seed)
    n = spec.image_size
    for i in range(spec.n_train):
        _write_png(_sample(domain, rng, n, False)[0], out / "train" / "good" / f"{domain}_train_{i:04d}.png")
    n_bad_pool = int(round(spec.n_unlabeled * spec.unlabeled_anomaly_rate))
    pool_labels = {}
    for i, abnormal in enumerate(rng.permutation([1] * n_bad_pool + [0] * (spec.n_unlabeled - n_bad_pool))):
        name = f"{domain}_pool_{i:04d}.png"
        _write_png(_sample(domain, rng, n, bool(abnormal))[0], out / "train" / "unlabeled" / name)
        pool_labels[name] = int(abnormal)
    for i in range(spec.n_test_good):
        _write_png(_sample(domain, rng, n, False)[0], out / "test" / "good" / f"{domain}_test_good_{i:04d}.png")
    for i in range(spec.n_test_bad):
        img, mask = _sample(domain, rng, n, True)
        _write_png(img, out / "test" / "bad" / f"{domain}_test_bad_{i:04d}.png")
        _write_png((mask * 255).astype(np.uint8), out / "ground_truth" / "bad" / f"{domain}_test_bad_{i:04d}.png")
    manifest = {
        "domain": domain,
        "generator_version": GENERATOR_VERSION,
        **asdict(spec),
        "n_unlabeled_abnormal": n_bad_pool,
        "unlabeled_labels": pool_labels,
    }
    atomic_write_json(manifest, out / "dataset.json")
    return out


def demo_root() -> Path:
    """Where demo data lives: ``$MEDAD_MONAI_DATA`` or ``~/.cache/medad_monai``, under a versioned folder."""
    base = os.environ.get("MEDAD_MONAI_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "medad_monai")
    return Path(base) / f"demo-v{GENERATOR_VERSION}"


def ensure_demo_domain(domain: str, root: str | os.PathLike | None = None, spec: DemoSpec = DemoSpec()) -> Path:
    """Return the folder of ``domain``, generating it first if it is not there yet.

    Generation goes to a temporary sibling folder that is renamed into place, so an interrupted run never leaves
    a half-written domain behind, and concurrent first uses are safe (the loser's copy is discarded).
    """
    root = Path(root) if root is not None else demo_root()
    dest = root / domain
    if (dest / "dataset.json").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    logger.info(f"generating demo domain {domain!r} in {dest} (first use)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{domain}.", dir=root))
    try:
        generate_domain(domain, tmp, spec)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the shared demo data from other users
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "dataset.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def generate_demo_data(
    out: str | os.PathLike, domains: list[str] | tuple[str, ...] | None = None, seed: int = 0
) -> list[Path]:
    """Write every (or the given) demo domain under ``out``; returns the domain folders."""
    spec = DemoSpec(seed=seed)
    return [ensure_demo_domain(d, out, spec) for d in (domains or list(DEMO_DOMAINS))]


def resolve_dataset_dir(path: str | os.PathLike) -> Path:
    """Turn a ``dataset_dir`` setting into a folder: ``demo:<domain>[/sub/folder]`` generates the demo domain on
    first use and returns its folder (or a folder inside it); anything else is a plain path."""
    text = str(path)
    if text.startswith(DEMO_PREFIX):
        domain, _, sub = text[len(DEMO_PREFIX) :].partition("/")
        folder = ensure_demo_domain(domain)
        return folder / sub if sub else folder
    return Path(text).expanduser()
