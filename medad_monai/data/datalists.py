"""Datalists for anomaly detection: the folder layout and JSON datalists, with errors that name the path.

Folder layout (MVTec-style; the user guide's "Data layout and formats")::

    <root>/train/good/            known normals (required for training)
    <root>/train/unlabeled/       optional unlabeled pool (DDAD's UDM)
    <root>/test/good/  <root>/test/bad/
    <root>/ground_truth/bad/      optional lesion masks, same file stem as test/bad (``x.png`` or ``x_mask.png``)

JSON datalist::

    {"training": [{"image": "a.png"}, ...], "unlabeled": [...], "validation": [...],
     "test": [{"image": "b.dcm", "label": 1, "mask": "b_mask.png"}, ...]}

Relative paths in a JSON datalist are resolved against the JSON file's folder. Every item is a dict with ``image``
(a path), ``label`` (0 normal, 1 abnormal, -1 unknown) and optionally ``mask``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from medad_monai.data.demo import resolve_dataset_dir
from medad_monai.io import IMAGE_EXTENSIONS, file_stem

__all__ = [
    "AnomalyDatalist",
    "folder_datalist",
    "image_files",
    "input_datalist",
    "load_json_datalist",
    "split_pool",
    "split_validation",
]

UNKNOWN_LABEL = -1


def _has_image_extension(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in IMAGE_EXTENSIONS)


def _is_dicom_without_extension(path: Path) -> bool:
    """DICOM files often have no extension; they carry ``DICM`` at byte 128 (PS3.10 §7.1)."""
    if path.suffix:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def image_files(folder: str | os.PathLike, required: bool = True) -> list[Path]:
    """Sorted image files directly inside ``folder``.

    Raises:
        FileNotFoundError: ``required`` and the folder does not exist.
        ValueError: ``required`` and the folder holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if required:
            raise FileNotFoundError(f"{folder}: folder not found (expected train/good, test/good, test/bad ...)")
        return []
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and (_has_image_extension(p) or _is_dicom_without_extension(p))
    )
    if required and not files:
        raise ValueError(f"{folder}: folder is empty: no image files with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return files


def _find_mask(mask_dir: Path, image: Path) -> Path | None:
    if not mask_dir.is_dir():
        return None
    stem = file_stem(image)
    for candidate in image_files(mask_dir, required=False):
        if file_stem(candidate) in (stem, f"{stem}_mask"):
            return candidate
    return None


def folder_datalist(root: str | os.PathLike, split: str) -> list[dict[str, Any]]:
    """Items of one split of the folder layout.

    Args:
        root: dataset folder (``demo:<domain>`` selects an embedded demo domain).
        split: ``"train"`` (train/good, required), ``"unlabeled"`` (train/unlabeled, optional: ``[]`` if absent)
            or ``"test"`` (test/good and test/bad, at least one required, with masks from ground_truth/bad).
    """
    root = resolve_dataset_dir(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    if split == "train":
        return [{"image": str(p), "label": 0} for p in image_files(root / "train" / "good")]
    if split == "unlabeled":
        return [{"image": str(p), "label": UNKNOWN_LABEL} for p in image_files(root / "train" / "unlabeled", False)]
    if split == "test":
        good = image_files(root / "test" / "good", required=False)
        bad = image_files(root / "test" / "bad", required=False)
        if not good and not bad:
            raise ValueError(f"{root / 'test'}: no test images in test/good or test/bad")
        items = [{"image": str(p), "label": 0} for p in good]
        for p in bad:
            item: dict[str, Any] = {"image": str(p), "label": 1}
            mask = _find_mask(root / "ground_truth" / "bad", p)
            if mask is not None:
                item["mask"] = str(mask)
            items.append(item)
        return items
    raise ValueError(f"unknown split {split!r}: use 'train', 'unlabeled' or 'test'")


def load_json_datalist(path: str | os.PathLike, key: str, required: bool = True) -> list[dict[str, Any]]:
    """Items under ``key`` of a JSON datalist, with paths resolved and checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist file not found")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    entries = content.get(key, [])
    if required and not entries:
        raise ValueError(f"{path}: datalist has no entries under {key!r}")
    items = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{path}: entry {i} of {key!r} has no 'image' field: {entry!r}")
        item = dict(entry)
        for field in ("image", "mask"):
            if field in item:
                p = Path(item[field]).expanduser()
                p = p if p.is_absolute() else path.parent / p
                if not p.exists():
                    raise FileNotFoundError(f"{path}: entry {i} of {key!r}: {field} file {p} not found")
                item[field] = str(p)
        item.setdefault("label", 0 if key in ("training", "validation") else UNKNOWN_LABEL)
        items.append(item)
    return items


def split_validation(
    items: list[dict[str, Any]], fraction: float, seed: int = 0, min_val: int = 1
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministically hold out ``fraction`` of ``items`` (at least ``min_val``) as validation normals."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(items), []
    n_val = max(min_val, int(round(len(items) * fraction)))
    if n_val >= len(items):
        raise ValueError(f"cannot hold out {n_val} validation images from {len(items)} training images")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in val_idx], [it for i, it in enumerate(items) if i in val_idx]


def split_pool(
    items: list[dict[str, Any]], fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out ``fraction`` of an unlabeled pool (deterministically): ``(pool to train on, held-out pool)``.

    The held-out images are unseen by every model, so scores on them can be compared with scores on held-out
    normals without favouring a model that saw them (see :mod:`medad_monai.metrics.score_selection`).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"pool hold-out fraction must be in [0, 1), got {fraction}")
    n_out = int(round(len(items) * fraction))
    if fraction == 0.0 or n_out == 0:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed + 1).shuffle(order)
    out_idx = set(order[:n_out])
    return [it for i, it in enumerate(items) if i not in out_idx], [it for i, it in enumerate(items) if i in out_idx]


class AnomalyDatalist:
    """The splits a bundle needs, from a folder layout or a JSON datalist.

    Args:
        dataset_dir: dataset folder, or ``demo:<domain>`` for an embedded demo domain.
        datalist: optional JSON datalist; when given it replaces the folder layout.
        val_fraction: fraction of the known normals held out as validation normals (threshold calibration).
        seed: seed of the validation split.
        pool_holdout: fraction of the unlabeled pool held out from training (:func:`split_pool`), for label-free
            choices that compare held-out pool images with validation normals.
        min_train: the fewest training normals the bundle can train on (after the validation hold-out); fewer is a
            ``ValueError`` in terms of ``train/good`` and ``val_fraction``.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        datalist: str | os.PathLike | None = None,
        val_fraction: float = 0.15,
        seed: int = 0,
        pool_holdout: float = 0.0,
        min_train: int = 1,
    ) -> None:
        self.dataset_dir = dataset_dir
        self.min_train = int(min_train)
        self.datalist = datalist
        self.val_fraction = val_fraction
        self.seed = seed
        self.pool_holdout = pool_holdout
        self._train: list[dict[str, Any]] | None = None
        self._val: list[dict[str, Any]] | None = None

    def _split(self) -> None:
        if self._train is not None:
            return
        if self.datalist:
            train = load_json_datalist(self.datalist, "training")
            val = load_json_datalist(self.datalist, "validation", required=False)
            if not val:
                train, val = split_validation(train, self.val_fraction, self.seed)
        else:
            normals = folder_datalist(self.dataset_dir, "train")
            try:
                train, val = split_validation(normals, self.val_fraction, self.seed)
            except ValueError as e:
                raise ValueError(
                    f"'{self.dataset_dir}/train/good': {e}; add normal images or lower --val_fraction"
                ) from e
        if len(train) < self.min_train:
            where = (
                f"datalist '{self.datalist}' (key 'training')" if self.datalist else f"'{self.dataset_dir}/train/good'"
            )
            raise ValueError(
                f"{where}: {len(train) + len(val)} normal images, {len(val)} held out for validation "
                f"(val_fraction {self.val_fraction}), leaves {len(train)} for training; at least {self.min_train} "
                "are needed: add normal images or lower --val_fraction"
            )
        self._train, self._val = train, val

    @property
    def train(self) -> list[dict[str, Any]]:
        """Known normals used for training (validation normals removed)."""
        self._split()
        return list(self._train or [])

    @property
    def val(self) -> list[dict[str, Any]]:
        """Held-out validation normals (never test images)."""
        self._split()
        return list(self._val or [])

    def _pool(self) -> list[dict[str, Any]]:
        if self.datalist:
            return load_json_datalist(self.datalist, "unlabeled", required=False)
        return folder_datalist(self.dataset_dir, "unlabeled")

    @property
    def unlabeled(self) -> list[dict[str, Any]]:
        """The unlabeled pool to train on (empty when there is none; without the ``pool_holdout`` part)."""
        return split_pool(self._pool(), self.pool_holdout, self.seed)[0]

    @property
    def unlabeled_holdout(self) -> list[dict[str, Any]]:
        """The held-out part of the unlabeled pool (empty unless ``pool_holdout`` > 0)."""
        return split_pool(self._pool(), self.pool_holdout, self.seed)[1]

    @property
    def test(self) -> list[dict[str, Any]]:
        """Labelled test images (with masks where available)."""
        if self.datalist:
            return load_json_datalist(self.datalist, "test")
        return folder_datalist(self.dataset_dir, "test")

    @property
    def evaluation(self) -> list[dict[str, Any]]:
        """The test images, checked to hold both normal and abnormal ones (AUROC and AP need both).

        Raises:
            ValueError: naming the split and the counts, before any image is scored.
        """
        items = self.test
        normal = sum(int(it.get("label", UNKNOWN_LABEL)) == 0 for it in items)
        abnormal = sum(int(it.get("label", UNKNOWN_LABEL)) == 1 for it in items)
        if normal == 0 or abnormal == 0:
            where = f"datalist '{self.datalist}' (key 'test')" if self.datalist else f"'{self.dataset_dir}/test'"
            raise ValueError(
                f"evaluation needs normal and abnormal test images; {where} holds {normal} normal (test/good) and "
                f"{abnormal} abnormal (test/bad) images. To score unlabelled images, run inference.json instead."
            )
        return items


def input_datalist(path: str | os.PathLike, key: str = "test") -> list[dict[str, Any]]:
    """Items to run inference on: every image under a folder (recursively), a JSON datalist, or one file."""
    path = resolve_dataset_dir(path)
    if path.is_file() and path.name.lower().endswith(".json"):
        return load_json_datalist(path, key)
    if path.is_file():
        return [{"image": str(path), "label": UNKNOWN_LABEL}]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input folder or file not found")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and (_has_image_extension(p) or _is_dicom_without_extension(p))
    )
    if not files:
        raise ValueError(f"{path}: no image files found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return [{"image": str(p), "label": UNKNOWN_LABEL} for p in files]
