"""Files: atomic writes, so an interrupted run never leaves a truncated checkpoint, table or picture, and the image
file names every layer derives its output names from (:func:`file_stem`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_text",
    "file_stem",
    "remove_stale_temporaries",
    "umask",
]


def umask() -> int:
    """The process's umask (read by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one ``os.replace``.

    The temporary file lives in the destination folder so the final rename never crosses file systems.
    On any exception the temporary file is removed and the previous ``path`` (if any) is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; a file written in place would have the umask's mode (e.g. 0644), which a
        # DICOM router or a viewer running as another user needs
        os.chmod(tmp_path, 0o666 & ~umask())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` leaves next to ``path`` when a process is killed mid-write
    (``.<name>.*.tmp``; an exception removes its own). Call it when a run that owns ``path`` starts."""
    dest = Path(path)
    if not dest.parent.is_dir():
        return []
    stale = sorted(dest.parent.glob(f".{dest.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(json.dumps(obj, indent=indent, default=str) + "\n", path)


def atomic_savefig(save: Callable[[Path], None], path: str | os.PathLike) -> Path:
    """Run ``save(tmp_path)`` (e.g. ``lambda p: fig.savefig(p, format='png')``) and move the result to ``path``."""
    with atomic_path(path) as tmp:
        save(tmp)
    return Path(path)


# image file extensions the readers take (``.nii.gz`` is one extension)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd")


def file_stem(path: str | os.PathLike) -> str:
    """File name without its image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem
