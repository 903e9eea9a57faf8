"""3D demo volumes for serving tests: one subject of a volumetric demo domain, without and with a lesion.

A volume is a stack of axial sections of the same 2D demo anatomy (:mod:`medad_monai.data.demo`): full sections in
the middle of the stack (the levels the 2D demo images show), shrinking towards both ends as the ends of an
ellipsoid do, so the end slices hold little tissue, as the top of a real head does. The lesion version is the same
subject with one lesion of the domain's recipe placed in a central slice and tapering over ``lesion_slices`` slices;
its mask is the ground truth. These are fixtures for the volume scoring path (volume-level intensity scaling, slices
outside the body, the ``anomaly`` label), not a benchmark.

Intensities are stored as a scanner would, not in the 8-bit range of the 2D demo: MR in arbitrary units (float32),
CT in Hounsfield-like units (int16), so that the bundles' intensity policy scales them per volume.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from medad_monai.data.demo import DEMO_DOMAINS, _acquire, _resample, _subject_coordinates
from medad_monai.io import atomic_path

__all__ = ["VOLUME_DOMAINS", "DemoVolume", "demo_volume", "write_demo_subjects", "write_demo_volumes"]

# domains whose images are sections of a volume, and how their values are stored: (scale, offset, dtype)
VOLUME_DOMAINS = {
    "brain_mr": (1000.0, 0.0, np.float32),
    "head_ct": (2000.0, -1000.0, np.int16),
    "abdomen_ct": (2000.0, -1000.0, np.int16),
}


# the middle of the stack (|t| <= PLATEAU) holds full sections, as the 2D demo images are; the ends taper off
PLATEAU = 0.55


@dataclass
class DemoVolume:
    """A demo volume in NIfTI axis order ``(X, Y, Z)`` (X = image columns, as MONAI loads the 2D demo PNGs), slices
    along Z.

    Attributes:
        image: stored intensities (MR float32 or CT int16).
        mask: uint8 lesion mask (all zero for the normal volume).
        affine: 4x4 voxel-to-world affine (1 x 1 mm in plane, ``slice_spacing`` mm between slices).
        lesion_slices: indices of the slices the lesion touches.
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    lesion_slices: list[int]


def _section(field: np.ndarray, scale: float, mode: str = "constant") -> np.ndarray:
    """``field`` shrunk about its centre by ``scale`` (the section of an ellipsoid at that height)."""
    n = field.shape[0]
    c = (n - 1) / 2
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return _resample(field, np.stack([c + (y - c) / scale, c + (x - c) / scale]), mode)


def _bias_volume(rng: np.random.Generator, size: int, num_slices: int, slice_spacing: float) -> np.ndarray:
    """A smooth multiplicative field of unit standard deviation over the volume, ``(Z, size, size)``: the 2D demo's
    field (Gaussian-filtered noise, sigma a quarter of the width at 1 mm pixels) extended to 3D."""
    sigma = size / 4
    field = ndimage.gaussian_filter(
        rng.standard_normal((num_slices, size, size)).astype(np.float32), (sigma / slice_spacing, sigma, sigma)
    )
    return field / (field.std() + 1e-8)


def demo_volume(
    domain: str,
    abnormal: bool,
    seed: int = 0,
    size: int = 128,
    num_slices: int = 32,
    lesion_slices: int = 5,
    slice_spacing: float = 3.0,
) -> DemoVolume:
    """One subject of ``domain`` as a volume; ``abnormal`` adds a lesion (the same subject and noise otherwise).

    Args:
        domain: one of :data:`VOLUME_DOMAINS`.
        abnormal: add a lesion centred in a slice of the middle third, over ``lesion_slices`` slices.
        seed: the subject (the normal and the lesion volume of one seed are the same subject).
        size: in-plane size; num_slices: slices along Z.
    """
    if domain not in VOLUME_DOMAINS:
        raise ValueError(f"no 3D demo for domain {domain!r}; available: {sorted(VOLUME_DOMAINS)}")
    if num_slices < 8 or lesion_slices < 1:
        raise ValueError(f"need at least 8 slices and a lesion of at least 1 slice, got {num_slices}, {lesion_slices}")
    anatomy, recipe, var = DEMO_DOMAINS[domain]
    rng = np.random.default_rng([seed, 3, *domain.encode()])
    img, organ, foreground, tissue = anatomy(rng, size)
    coords = _subject_coordinates(rng, size, var)
    img = _resample(img, coords)
    organ_f = _resample(organ.astype(np.float32), coords, "constant")
    foreground = _resample(foreground.astype(np.float32), coords, "constant")
    t = np.abs(np.arange(num_slices) - (num_slices - 1) / 2) / ((num_slices - 1) / 2 * 1.04)
    scales = np.sqrt(1.0 - (np.clip(t - PLATEAU, 0, None) / (1 - PLATEAU)) ** 2)
    slices = [_section(img, s) for s in scales]
    organs = [_section(organ_f, s) > 0.5 for s in scales]
    bodies = [_section(foreground, s) for s in scales]
    masks = [np.zeros((size, size), bool) for _ in scales]
    touched: list[int] = []
    lesion_rng = np.random.default_rng([seed, 4, *domain.encode()])  # the normal volume never draws from it
    if abnormal:
        centre = num_slices // 2 + int(lesion_rng.integers(-num_slices // 8, num_slices // 8 + 1))
        lesioned, core = recipe(lesion_rng, slices[centre], organs[centre], tissue)
        delta = lesioned - slices[centre]  # the lesion's effect on its central slice
        depth = ndimage.distance_transform_edt(core)
        half = lesion_slices // 2
        for dz in range(-half, half + 1):
            z = centre + dz
            if not 0 <= z < num_slices:
                continue
            taper = np.sqrt(max(0.0, 1.0 - (abs(dz) / (half + 1)) ** 2))  # an ellipsoidal lesion
            m = core if dz == 0 else depth > depth.max() * (1.0 - taper)
            if not m.any():
                continue
            weight = 1.0 if dz == 0 else np.clip(ndimage.gaussian_filter(m.astype(np.float32), 1.0) * 1.5, 0, 1)
            slices[z] = slices[z] + delta * weight
            masks[z] = m
            touched.append(z)
    noise_rng = np.random.default_rng([seed, 5, *domain.encode()])  # same scanner gain and noise in both versions
    # one acquisition: one gain, one noise level and one bias field, smooth in 3D (as wide along Z, in mm, as in
    # plane), for every slice; independent per-slice fields would make neighbouring sections of one subject differ
    # as much as two subjects do, which no scanner does
    gain = noise_rng.uniform(*var.gain)
    scanner = replace(var, gain=(gain, gain))
    noise_std = float(noise_rng.uniform(*var.noise))
    bias = _bias_volume(noise_rng, size, num_slices, slice_spacing) if var.bias > 0 else [None] * num_slices
    out = [
        np.clip(_acquire(noise_rng, s, scanner, body, field, noise_std), 0.0, 1.0)
        for s, body, field in zip(slices, bodies, bias)
    ]
    scale, offset, dtype = VOLUME_DOMAINS[domain]
    volume = np.stack(out, axis=-1).transpose(1, 0, 2) * scale + offset  # (rows, cols, Z) -> (X=cols, Y=rows, Z)
    volume = volume.round().astype(dtype) if np.issubdtype(dtype, np.integer) else volume.astype(dtype)
    mask = np.stack(masks, axis=-1).transpose(1, 0, 2).astype(np.uint8)
    affine = np.diag([1.0, 1.0, float(slice_spacing), 1.0])
    return DemoVolume(volume, mask, affine, touched)


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(nib.Nifti1Image(array, affine).to_bytes(), compresslevel=6))
    return path


def write_demo_volumes(out_dir: str | os.PathLike, domains: list[str] | None = None, seed: int = 0) -> list[Path]:
    """Write ``<domain>_normal.nii.gz``, ``<domain>_lesion.nii.gz`` and ``<domain>_lesion_mask.nii.gz`` per domain
    (default: every domain of :data:`VOLUME_DOMAINS`); returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for domain in domains or list(VOLUME_DOMAINS):
        normal, lesion = demo_volume(domain, False, seed), demo_volume(domain, True, seed)
        for name, array in (("normal", normal.image), ("lesion", lesion.image), ("lesion_mask", lesion.mask)):
            written.append(_write_nifti(array, normal.affine, out / f"{domain}_{name}.nii.gz"))
    return written


def write_demo_subjects(
    out_dir: str | os.PathLike,
    domain: str,
    seeds: list[int] | range,
    lesion: bool = False,
    size: int = 128,
    num_slices: int = 32,
) -> list[Path]:
    """Write the normal volume of each subject in ``seeds`` as ``<domain>_subject<seed>_normal.nii.gz`` (with
    ``lesion``: also ``..._lesion.nii.gz`` and ``..._lesion_mask.nii.gz``); returns the written paths. Normal volumes
    of subjects the model is not judged on are what :mod:`medad_monai.inference.volume_calibration` needs; ``size`` and
    ``num_slices`` as :func:`demo_volume`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for seed in seeds:
        stem = out / f"{domain}_subject{seed}"
        normal = demo_volume(domain, False, seed, size, num_slices)
        written.append(_write_nifti(normal.image, normal.affine, Path(f"{stem}_normal.nii.gz")))
        if lesion:
            abnormal = demo_volume(domain, True, seed, size, num_slices)
            written.append(_write_nifti(abnormal.image, abnormal.affine, Path(f"{stem}_lesion.nii.gz")))
            written.append(_write_nifti(abnormal.mask, abnormal.affine, Path(f"{stem}_lesion_mask.nii.gz")))
    return written
