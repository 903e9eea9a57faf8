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

from medad_monai.io import atomic_write_json

__all__ = [
    "DEMO_DOMAINS",
    "DemoSpec",
    "demo_root",
    "ensure_demo_domain",
    "generate_demo_data",
    "resolve_dataset_dir",
]

logger = logging.getLogger("medad_monai")

# Bumped whenever generated images change, so a cached older copy is never reused (v2: larger brain_mr lesions).
GENERATOR_VERSION = 2
# Part of the RNG seed; kept fixed across versions so unchanged domains keep their images.
_RNG_STREAM = 1
DEMO_PREFIX = "demo:"


@dataclass(frozen=True)
class DemoSpec:
    """Sizes of one generated domain."""

    image_size: int = 128
    n_train: int = 64
    n_unlabeled: int = 48
    unlabeled_anomaly_rate: float = 0.5
    n_test_good: int = 24
    n_test_bad: int = 24
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


def _lesion_mask(rng: np.random.Generator, n: int, region: np.ndarray, r_min: float, r_max: float) -> np.ndarray:
    """An irregular blob (thresholded smooth noise inside a disc) centred inside ``region`` (a boolean mask)."""
    ys, xs = np.nonzero(region)
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


def _apply_lesion(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, contrast: float) -> np.ndarray:
    soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    texture = 1.0 + 0.15 * _smooth_noise(rng, img.shape[0], 1.5)
    return img + contrast * soft * texture


# ----------------------------------------------------------------------------------------------- domains
def _brain_mr(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial T2-like brain: dark skull, bright CSF rim and ventricles, grey/white matter texture."""
    ang = rng.uniform(-0.2, 0.2)
    ry, rx = rng.uniform(0.78, 0.88), rng.uniform(0.62, 0.72)
    head = _ellipse(n, 0, 0, ry, rx, ang)
    brain = _ellipse(n, 0, 0, ry - 0.08, rx - 0.08, ang)
    img = 0.15 * _soft(head) + 0.45 * _soft(brain)
    img += 0.25 * (_soft(head) - _soft(_ellipse(n, 0, 0, ry - 0.04, rx - 0.04, ang))).clip(0)  # scalp
    white = _soft(_ellipse(n, 0.02, 0, ry - 0.25, rx - 0.22, ang)) * (0.5 + 0.5 * (_smooth_noise(rng, n, 6) > -0.3))
    img -= 0.12 * white
    vy = rng.uniform(0.16, 0.26)
    for side in (-1, 1):
        vent = _ellipse(n, -0.05, side * rng.uniform(0.08, 0.12), vy, 0.05, side * 0.35 + ang)
        img += 0.35 * _soft(vent, 0.15)
    img += 0.03 * _smooth_noise(rng, n, 1.0) * _soft(head)
    organ = (brain < 0.8) & (_ellipse(n, -0.05, 0, vy + 0.05, 0.2, ang) > 1)
    return img, organ


def _head_ct(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-contrast head CT: bright skull ring, uniform brain, faint sulci."""
    ang = rng.uniform(-0.25, 0.25)
    ry, rx = rng.uniform(0.8, 0.9), rng.uniform(0.65, 0.75)
    outer = _ellipse(n, 0, 0, ry, rx, ang)
    inner = _ellipse(n, 0, 0, ry - rng.uniform(0.06, 0.1), rx - 0.08, ang)
    img = 0.9 * (_soft(outer, 0.03) - _soft(inner, 0.03)).clip(0) + 0.42 * _soft(inner, 0.03)
    sulci = np.abs(_smooth_noise(rng, n, 3.0)) < 0.15
    img -= 0.05 * sulci * _soft(_ellipse(n, 0, 0, ry - 0.12, rx - 0.12, ang))
    img += 0.025 * _smooth_noise(rng, n, 0.7) * _soft(outer)
    organ = inner < 0.75
    return img, organ


def _chest_xray(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frontal chest radiograph: bright body, dark lungs, ribs, mediastinum and heart."""
    img = 0.55 * _soft(_ellipse(n, 0.1, 0, 1.0, rng.uniform(0.85, 0.95)), 0.1)
    lungs = np.zeros((n, n), np.float32)
    for side in (-1, 1):
        lung = _ellipse(n, rng.uniform(-0.1, 0.0), side * rng.uniform(0.38, 0.45), rng.uniform(0.55, 0.65), 0.27)
        lungs = np.maximum(lungs, _soft(lung, 0.06))
    img -= 0.35 * lungs
    y, x = _grid(n)
    phase = rng.uniform(0, np.pi)
    ribs = (np.sin((y + 0.25 * x**2) * rng.uniform(13, 16) + phase) > 0.75).astype(np.float32)
    img += 0.08 * ndimage.gaussian_filter(ribs, 1.0) * lungs
    img += 0.3 * _soft(_ellipse(n, 0.3, rng.uniform(0.05, 0.15), 0.3, 0.28), 0.08)  # heart
    img += 0.2 * _soft(_ellipse(n, -0.4, 0, 0.6, 0.08), 0.1)  # mediastinum / spine
    img += 0.03 * _smooth_noise(rng, n, 2.0)
    organ = lungs > 0.7
    return img, organ


def _fundus(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Retinal fundus (green channel): bright disc on the side, dark branching vessels, dark macula."""
    field = _soft(_ellipse(n, 0, 0, 0.92, 0.92), 0.04)
    side = rng.choice([-1, 1])
    dy, dx = rng.uniform(-0.1, 0.1), side * rng.uniform(0.35, 0.45)
    img = 0.5 * field
    img += 0.4 * _soft(_ellipse(n, dy, dx, 0.12, 0.1), 0.15)
    img -= 0.15 * _soft(_ellipse(n, 0, -side * 0.1, 0.15, 0.15), 0.4)  # macula
    y, x = _grid(n)
    vessels = np.zeros((n, n), np.float32)
    for _ in range(rng.integers(6, 9)):
        theta = rng.uniform(0, 2 * np.pi)
        curl = rng.uniform(-1.2, 1.2)
        r = np.sqrt((y - dy) ** 2 + (x - dx) ** 2)
        a = np.arctan2(y - dy, x - dx) - theta - curl * r
        width = rng.uniform(0.01, 0.025) * (1.2 - r).clip(0.2)
        vessels = np.maximum(vessels, np.exp(-((r * np.sin(a)) ** 2) / (2 * width**2)) * (np.cos(a) > 0))
    img -= 0.22 * vessels * field
    img += 0.02 * _smooth_noise(rng, n, 1.0) * field
    organ = (_ellipse(n, 0, 0, 0.8, 0.8) < 1) & (_ellipse(n, dy, dx, 0.2, 0.2) > 1) & (vessels < 0.3)
    return img, organ


def _abdomen_ct(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial abdominal CT: body with fat rim, liver, spine, kidneys, aorta."""
    body = _ellipse(n, 0.05, 0, rng.uniform(0.62, 0.72), rng.uniform(0.85, 0.95))
    img = 0.25 * _soft(body, 0.04) + 0.2 * _soft(_ellipse(n, 0.05, 0, 0.55, 0.8), 0.05)
    liver = _ellipse(n, -0.05, -rng.uniform(0.3, 0.4), rng.uniform(0.35, 0.42), rng.uniform(0.3, 0.38), 0.3)
    img += 0.12 * _soft(liver, 0.05)
    img += 0.5 * _soft(_ellipse(n, 0.45, 0, 0.12, 0.11), 0.05)  # vertebral body
    for side in (-1, 1):
        img += 0.15 * _soft(_ellipse(n, 0.3, side * 0.32, 0.14, 0.09, side * 0.4), 0.06)
    img += 0.3 * _soft(_ellipse(n, 0.25, 0.08, 0.05, 0.05), 0.1)  # aorta
    img += 0.03 * _smooth_noise(rng, n, 1.2) * _soft(body)
    organ = liver < 0.8
    return img, organ


Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]

DEMO_DOMAINS: dict[str, tuple[Generator, tuple[float, float], tuple[float, float]]] = {
    # name: (generator, lesion radius range as a fraction of the width, absolute contrast range)
    "brain_mr": (_brain_mr, (0.08, 0.2), (0.25, 0.5)),
    "head_ct": (_head_ct, (0.04, 0.12), (0.2, 0.4)),
    "chest_xray": (_chest_xray, (0.05, 0.13), (0.2, 0.4)),
    "fundus": (_fundus, (0.03, 0.08), (0.2, 0.4)),
    "abdomen_ct": (_abdomen_ct, (0.04, 0.1), (0.15, 0.35)),
}


def _sample(domain: str, rng: np.random.Generator, n: int, abnormal: bool) -> tuple[np.ndarray, np.ndarray]:
    gen, radius, contrast = DEMO_DOMAINS[domain]
    img, organ = gen(rng, n)
    mask = np.zeros((n, n), bool)
    if abnormal:
        for _ in range(rng.integers(1, 3)):
            m = _lesion_mask(rng, n, organ, *radius)
            sign = rng.choice([-1.0, 1.0])
            img = _apply_lesion(rng, img, m, sign * rng.uniform(*contrast))
            mask |= m
    img = np.clip(img, 0.0, 1.0)
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
