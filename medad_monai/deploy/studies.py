"""Find the studies in an input folder: DICOM series, NIfTI files and PNG/JPEG pictures, and the files that are none.

DICOM files are recognised by content, not by name (PACS exports often have no suffix): every file that is not a
NIfTI or a picture is read with pydicom (``stop_before_pixels``), and image instances are grouped by
``SeriesInstanceUID``. A file that is not DICOM, or a DICOM object without pixels (an SR, a presentation state),
is a *stray* file: it is reported, never silently dropped, and never stops the run. An input with no readable
study at all is an error (:class:`NoStudyError`) naming the folder.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medad_monai.io import file_stem

__all__ = ["NIFTI_SUFFIXES", "PICTURE_SUFFIXES", "NoStudyError", "Study", "StrayFile", "discover_studies"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
# files an OS or a PACS export leaves beside images that are not worth a warning
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class NoStudyError(RuntimeError):
    """The input holds no readable study; the message names the folder (and how many files were skipped)."""


@dataclass
class StrayFile:
    """A file of the input that is not part of any study, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class Study:
    """One unit of work: a DICOM series, a NIfTI file or a picture.

    Attributes:
        name: unique, file-system safe stem for the outputs (``<name>_anomaly_map.nii.gz`` ...).
        kind: ``"dicom"``, ``"nifti"`` or ``"picture"``.
        files: the input files (DICOM: the series' instances, in no particular order; others: one file).
        study_uid, series_uid: DICOM Study/Series Instance UIDs (``None`` for other kinds).
        modality, series_description: from the DICOM header, for the report.
        strays: stray files found in this study's folder (reported in its JSON too).
    """

    name: str
    kind: str
    files: list[Path]
    study_uid: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    series_description: str | None = None
    strays: list[StrayFile] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return self.kind == "dicom"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (paths as strings)."""
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "files": [str(f) for f in self.files]}
        if self.is_dicom:
            info.update(
                study_instance_uid=self.study_uid,
                series_instance_uid=self.series_uid,
                modality=self.modality,
                series_description=self.series_description,
            )
        if self.strays:
            info["stray_files"] = [s.to_dict() for s in self.strays]
        return info


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    return None


def _read_dicom_header(path: Path) -> tuple[Any | None, str]:
    """``(dataset, "")`` for a DICOM image instance, else ``(None, reason)``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None, "not a DICOM file"
    except Exception as e:  # truncated or corrupt files raise many types
        return None, f"unreadable DICOM: {type(e).__name__}: {e}"
    if "Rows" not in ds or "Columns" not in ds:
        return None, f"DICOM without an image (SOP class {ds.get('SOPClassUID', 'unknown')})"
    if "SeriesInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        return None, "DICOM image without Study/Series Instance UID"
    return ds, ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "study"


def _relative_stem(path: Path, root: Path) -> str:
    """``sub/dir/image.nii.gz`` -> ``sub__dir__image``: unique across sub-folders and file-system safe."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    parts = [*rel.parts[:-1], file_stem(rel.name)]
    return "__".join(_safe(p) for p in parts)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def discover_studies(input_path: str | os.PathLike) -> tuple[list[Study], list[StrayFile]]:
    """Studies (sorted by name) and stray files of an input file or folder (searched recursively).

    A DICOM series split over several folders stays one study; a single-instance series is named after its file,
    a multi-instance one after its folder and series number.

    Raises:
        NoStudyError: the input does not exist, or holds no readable study (the message names it).
    """
    root = Path(input_path).expanduser()
    if not root.exists():
        raise NoStudyError(f"input '{root}' does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    strays: list[StrayFile] = []
    singles: list[tuple[str, Path]] = []
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f in files:
        rel_parts = f.relative_to(base).parts
        if f.name in _IGNORED_NAMES or any(part.startswith(".") for part in rel_parts):
            continue  # hidden files and folders (partial downloads, .git) are not studies nor worth a report
        kind = _suffix_kind(f)
        if kind is not None:
            singles.append((kind, f))
            continue
        ds, reason = _read_dicom_header(f)
        if ds is None:
            strays.append(StrayFile(f, reason))
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((f, ds))

    taken: set[str] = set()
    studies: list[Study] = []
    for kind, f in singles:
        studies.append(Study(name=_unique(_relative_stem(f, base), taken), kind=kind, files=[f]))
    for uid, members in series.items():
        paths = sorted(p for p, _ in members)
        ds = members[0][1]
        if len(paths) == 1:
            name = _relative_stem(paths[0], base)
        else:
            try:
                parts = paths[0].parent.relative_to(base).parts
            except ValueError:
                parts = ()
            folder = "__".join(_safe(p) for p in parts)
            number = ds.get("SeriesNumber")
            tag = f"series{int(number)}" if number not in (None, "") else f"series_{uid[-8:]}"
            name = f"{folder}__{tag}" if folder else tag
        studies.append(
            Study(
                name=_unique(_safe(name), taken),
                kind="dicom",
                files=paths,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=uid,
                modality=str(ds.get("Modality", "")) or None,
                series_description=str(ds.get("SeriesDescription", "")) or None,
            )
        )
    studies.sort(key=lambda s: s.name)
    for stray in strays:
        logger.warning("stray file '%s' skipped: %s", stray.path, stray.reason)
    for st in studies:
        folders = {f.parent for f in st.files}
        st.strays = [stray for stray in strays if stray.path.parent in folders]
    if not studies:
        detail = f"; {len(strays)} file(s) skipped, e.g. '{strays[0].path}': {strays[0].reason}" if strays else ""
        raise NoStudyError(
            f"no readable study in '{root}' (expected DICOM series, NIfTI .nii/.nii.gz or PNG/JPEG images){detail}"
        )
    return studies, strays
