"""DICOM results a PACS can store: a Comprehensive SR with the score and decision, and a binary SEG of the
thresholded map, both built with highdicom and both in the source study (same Study Instance UID, patient and
study attributes copied from the source series, which they reference).

Why highdicom and not the SDK's writers: ``DICOMTextSRWriterOperator`` writes one free-text item, so a PACS or a
downstream rule engine cannot read the score, the threshold or the decision as coded values; the SDK's
``DICOMSegmentationWriterOperator`` takes an SDK ``Image`` built by ``DICOMSeriesToVolumeOperator`` and its own
``DICOMSeries`` objects, while our maps come from MONAI's ``PydicomReader`` (the reader the bundles use, which
parity needs). highdicom is what the SDK's SEG writer uses underneath.

Geometry: MONAI's ``PydicomReader`` gives each instance's pixels transposed (``(columns, rows)``) and stacks a
series along the third axis in slice-position order; each SEG frame is the mask slice whose origin (the affine
applied to voxel ``(0, 0, k)``, RAS -> LPS) is nearest the instance's ``ImagePositionPatient``, transposed back to
``(rows, columns)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medad_monai.deploy.scoring import ScoredStudy
from medad_monai.io import atomic_path

__all__ = [
    "ANOMALY_SCORE",
    "ANOMALY_THRESHOLD",
    "MANUFACTURER",
    "build_seg",
    "build_sr",
    "coding_scheme_item",
    "frames_for_instances",
    "read_source_datasets",
    "write_dataset",
]

MANUFACTURER = "medad-monai"
# Private coding scheme for the two values no standard code describes (DICOM PS3.16 §8.2: 99 prefix).
SCHEME = "99MEDAD"


def _code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


ANOMALY_SCORE = ("ANOMSCORE", SCHEME, "Anomaly score")
ANOMALY_THRESHOLD = ("ANOMTHRESH", SCHEME, "Anomaly decision threshold")


# Type 2 attributes of the Patient and General Study modules that the SR and SEG copy from their source images:
# a source may omit them (many single-slice exports do); the standard allows them present and empty
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def read_source_datasets(paths: list[Path]) -> list[Any]:
    """The series' instances as pydicom datasets (with pixels: highdicom checks the source images' geometry);
    Type 2 patient and study attributes the source omits are added empty (:data:`TYPE2_PATIENT_STUDY`), as the
    standard allows, so that the SR and SEG, which copy them, can be written."""
    import pydicom

    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p)
        except Exception as e:
            raise OSError(f"cannot read DICOM '{p}': {type(e).__name__}: {e}") from e
        for keyword in TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


def frames_for_instances(scored: ScoredStudy, datasets: list[Any]) -> np.ndarray:
    """``(n_instances, rows, columns)`` boolean mask frames, one per source dataset, in the datasets' order."""
    mask = np.asarray(scored.result.mask) > 0
    if mask.ndim == 2:
        mask = mask[:, :, None]
    affine = np.asarray(scored.result.affine, dtype=np.float64)
    origins = np.stack([affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3] for k in range(mask.shape[2])])
    origins[:, :2] *= -1.0  # MONAI's affine is RAS; DICOM positions are LPS
    frames = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (mask.shape[0], mask.shape[1]) != (cols, rows):
            raise ValueError(
                f"study '{scored.study.name}': mask slices {mask.shape[:2]} do not match instance "
                f"{ds.SOPInstanceUID} ({cols} columns x {rows} rows)"
            )
        if mask.shape[2] == 1:
            k = 0
        else:
            pos = np.asarray([float(v) for v in ds.ImagePositionPatient])
            k = int(np.argmin(np.linalg.norm(origins - pos, axis=1)))
        frames.append(mask[:, :, k].T)
    return np.stack(frames)


def _software_version() -> str:
    from medad_monai import __version__

    return str(__version__)


def build_sr(scored: ScoredStudy, datasets: list[Any], series_number: int = 9001) -> Any:
    """A Comprehensive SR (``highdicom.sr.ComprehensiveSR``) in the source study with coded items:
    algorithm name and version, anomaly score, threshold (when calibrated), finding Normal/Abnormal/Indeterminate,
    a narrative summary, and the most anomalous source instance as an image reference. The source series is its
    evidence (Current Requested Procedure Evidence Sequence)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    r, model = scored.result, scored.result.model
    name = str(model.get("name") or "anomaly bundle")
    version = f"{model.get('version', '')} (weights {model.get('model_version', '')})".strip()
    items: list[Any] = [
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=name[:64], relationship_type="HAS OBS CONTEXT"),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=version[:64], relationship_type="HAS OBS CONTEXT"),
        hd.sr.NumContentItem(
            name=_code(*ANOMALY_SCORE), value=float(r.score), unit=codes.UCUM.NoUnits, relationship_type="CONTAINS"
        ),
    ]
    if math.isfinite(r.threshold):
        items.append(
            hd.sr.NumContentItem(
                name=_code(*ANOMALY_THRESHOLD),
                value=float(r.threshold),
                unit=codes.UCUM.NoUnits,
                relationship_type="CONTAINS",
            )
        )
    finding = {1: codes.SCT.Abnormal, 0: codes.SCT.Normal}.get(r.decision, codes.SCT.Indeterminate)
    items.append(hd.sr.CodeContentItem(name=codes.DCM.Finding, value=finding, relationship_type="CONTAINS"))
    items.append(
        hd.sr.TextContentItem(name=codes.DCM.NarrativeSummary, value=summary_text(scored), relationship_type="CONTAINS")
    )
    top = _top_instance(scored, datasets)
    items.append(
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=top.SOPClassUID,
            referenced_sop_instance_uid=top.SOPInstanceUID,
            relationship_type="CONTAINS",
        )
    )
    container = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport)
    container.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=datasets,
        content=container,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"AI anomaly report ({name})"[:64],
    )
    sr.CodingSchemeIdentificationSequence = [coding_scheme_item()]  # our private codes, declared (PS3.3 C.12.1)
    return sr


def coding_scheme_item() -> Any:
    """The Coding Scheme Identification item that declares :data:`SCHEME` (a private scheme: no registry, no UID)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "medad-monai anomaly detection measurements"
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def _top_instance(scored: ScoredStudy, datasets: list[Any]) -> Any:
    """The source instance holding the most anomalous slice (the only one for a 2D study)."""
    if len(datasets) == 1:
        return datasets[0]
    r = scored.result
    if r.map.ndim != 3 or r.axis != 2:  # sliced along another axis: report the instance with the highest map value
        k = int(np.unravel_index(int(np.argmax(r.map)), r.map.shape)[2]) if r.map.ndim == 3 else 0
    else:
        k = r.top_slice
    affine = np.asarray(r.affine, dtype=np.float64)
    origin = affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3]
    origin[:2] *= -1.0
    dist = [np.linalg.norm(np.asarray([float(v) for v in ds.ImagePositionPatient]) - origin) for ds in datasets]
    return datasets[int(np.argmin(dist))]


def summary_text(scored: ScoredStudy) -> str:
    """One-line human summary, as written in the SR's narrative item and the log."""
    r = scored.result
    decision = {1: "ANOMALOUS", 0: "normal"}.get(r.decision, "undetermined (model not calibrated)")
    threshold = f"{r.threshold:.6g}" if math.isfinite(r.threshold) else "none"
    if r.threshold_source == "volume":  # say so: the image threshold is the one a reader of the model card knows
        threshold += ", volume threshold"
    return f"Anomaly score {r.score:.6g} (threshold {threshold}): {decision}. Model {r.model.get('name', '')}."


def build_seg(scored: ScoredStudy, datasets: list[Any], series_number: int = 9002) -> Any:
    """A binary DICOM SEG (``highdicom.seg.Segmentation``) of the result's mask, one frame per source instance
    (empty frames kept, so every source image has its frame), segment ``anomaly`` (Morphologically Abnormal
    Structure / Lesion), algorithm identification with the model's name and version."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    missing = [str(ds.get("SOPInstanceUID", "?")) for ds in datasets if "FrameOfReferenceUID" not in ds]
    if missing:
        raise ValueError(
            f"study '{scored.study.name}': a DICOM SEG needs the source images' frame of reference, and instance "
            f"{missing[0]} has no FrameOfReferenceUID; the SR and the NIfTI/JSON results are written without it"
        )
    model = scored.result.model
    name = str(model.get("name") or "anomaly bundle")[:64]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=name,
        family=codes.cid7162.ArtificialIntelligence,
        version=str(model.get("model_version") or model.get("version") or "unknown")[:64],
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="anomaly",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames_for_instances(scored, datasets).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=name,
        software_versions=_software_version(),
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=f"AI anomaly mask ({name})"[:64],
    )


def write_dataset(ds: Any, path: str | os.PathLike) -> Path:
    """Save a pydicom/highdicom dataset atomically (DICOM Part 10 file with preamble)."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return Path(path)
