"""Holoscan operators of the anomaly application (MONAI Deploy App SDK ``Operator``).

``StudySourceOperator`` -> ``AnomalyInferenceOperator`` -> (``AnomalyResultWriterOperator``,
``DICOMAnomalySRWriterOperator``, ``DICOMAnomalySegWriterOperator``). One study flows per tick, so a large input
folder is streamed study by study. A study that cannot be read or scored is recorded in the shared :class:`RunLog`
and the run goes on with the next one (a hospital queue should not stop for one corrupt file); the application
fails at the end only when no study at all was scored.

Why not ``MonaiBundleInferenceOperator``: it casts outputs declared ``"type": "image"`` to uint8 (a float anomaly
map becomes a few integer levels), has no image score or stored threshold, and runs the bundle on a whole volume,
whereas the 2D anomaly bundles score a volume slice by slice. ``AnomalyInferenceOperator`` runs the package's
serving core instead, which reuses the bundle's own transforms and reduction (parity with ``inference.json``).
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import Fragment, Operator, OperatorSpec

from medad_monai.deploy.dicom_reports import build_seg, build_sr, read_source_datasets, summary_text, write_dataset
from medad_monai.deploy.scoring import ScoredStudy, score_study
from medad_monai.deploy.studies import StrayFile, Study
from medad_monai.inference import BundleModel, ScoringOptions, load_bundle_model, write_result

__all__ = [
    "AnomalyInferenceOperator",
    "AnomalyResultWriterOperator",
    "DICOMAnomalySRWriterOperator",
    "DICOMAnomalySegWriterOperator",
    "RunLog",
    "StudySourceOperator",
]

logger = logging.getLogger(__name__)


@dataclass
class RunLog:
    """What a run did, shared by the operators (thread-safe: Holoscan may tick operators on several threads).

    ``outputs[name]`` maps a study to its written files by kind (``map``, ``mask``, ``overlay``, ``json``,
    ``sr``, ``seg``); ``failures`` holds ``{"study", "stage", "error"}`` records; ``strays`` the skipped files.
    """

    strays: list[StrayFile] = field(default_factory=list)
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_output(self, study: str, kind: str, path: Path) -> None:
        with self._lock:
            self.outputs.setdefault(study, {})[kind] = path.name

    def add_failure(self, study: str, stage: str, error: BaseException) -> None:
        logger.error("study '%s' failed at %s: %s", study, stage, error)
        logger.debug("%s", "".join(traceback.format_exception(error)))
        with self._lock:
            self.failures.append({"study": study, "stage": stage, "error": f"{type(error).__name__}: {error}"})

    def add_study(self, study: str, record: dict[str, Any]) -> None:
        with self._lock:
            self.studies[study] = record


class StudySourceOperator(Operator):
    """Emits the discovered studies one per tick on ``study`` (give it ``CountCondition(len(studies))``)."""

    def __init__(self, fragment: Fragment, *args: Any, studies: list[Study], **kwargs: Any) -> None:
        self._studies = list(studies)
        self._next = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("study")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        if self._next >= len(self._studies):  # more ticks than studies: nothing left to send
            return
        study = self._studies[self._next]
        self._next += 1
        logger.info("study %d/%d: %s (%s)", self._next, len(self._studies), study.name, study.kind)
        op_output.emit(study, "study")


class AnomalyInferenceOperator(Operator):
    """Receives a :class:`Study` on ``study``, emits a :class:`ScoredStudy` (float map, mask, score, decision)
    on ``scored``. Serves ``model`` when given (the application loads it at compose time, so a bad bundle fails
    before any study is read), else loads ``model_path`` (bundle folder or TorchScript) once, at the first study."""

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        model_path: str | os.PathLike,
        run_log: RunLog,
        device: str | None = None,
        scoring: ScoringOptions | None = None,
        scratch: str | os.PathLike | None = None,
        model: BundleModel | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_path = Path(model_path)
        self.run_log = run_log
        self.device = device
        self.scoring = scoring if scoring is not None else ScoringOptions()
        self.scratch = scratch
        self._model = model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study")
        spec.output("scored")

    @property
    def model(self) -> BundleModel:
        """The served bundle (loaded on first use; a load error stops the run: no study can be scored)."""
        if self._model is None:
            self._model = load_bundle_model(self.model_path, device=self.device)
            logger.info("serving %s", self._model.describe())
        return self._model

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        study: Study = op_input.receive("study")
        model = self.model
        try:
            scored = score_study(model, study, self.scoring, scratch=self.scratch)
        except Exception as e:  # one unreadable study must not stop the queue; it is reported
            self.run_log.add_failure(study.name, "inference", e)
            return
        logger.info("%s: %s", study.name, summary_text(scored))
        op_output.emit(scored, "scored")


class _ScoredStudyWriter(Operator):
    """Receives a :class:`ScoredStudy` on ``scored`` and writes into ``output_folder``, recording in ``run_log``."""

    def __init__(
        self, fragment: Fragment, *args: Any, output_folder: str | os.PathLike, run_log: RunLog, **kwargs: Any
    ) -> None:
        self.output_folder = Path(output_folder)
        self.run_log = run_log
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("scored")


class AnomalyResultWriterOperator(_ScoredStudyWriter):
    """Writes, for each :class:`ScoredStudy` on ``scored``, into ``output_folder``: ``<name>_anomaly_map.nii.gz``
    (float32), ``<name>_anomaly_mask.nii.gz`` (uint8), ``<name>_overlay.png`` and ``<name>_anomaly.json`` (score,
    threshold, decision, slice scores, model, study UIDs and stray files). All writes are atomic."""

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        scored: ScoredStudy = op_input.receive("scored")
        name = scored.study.name
        # the DICOM SR and SEG are written later by their own operators and may fail: the run report lists the
        # files each study got, this JSON only what is written here
        extra: dict[str, Any] = {"study": scored.study.describe()}
        try:
            paths = write_result(scored.result, self.output_folder, stem=name, extra=extra)
        except Exception as e:
            self.run_log.add_failure(name, "write", e)
            return
        for kind, path in paths.items():
            self.run_log.add_output(name, kind, path)
        self.run_log.add_study(name, {**scored.result.summary(), "study": scored.study.describe()})


class _DICOMWriterBase(_ScoredStudyWriter):
    """Shared shape of the SR and SEG writers: skip non-DICOM studies, ``builder(scored, source datasets)``, save
    as ``<name>_<kind>.dcm``."""

    kind: str
    builder: Callable[[ScoredStudy, list[Any]], Any]

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        scored: ScoredStudy = op_input.receive("scored")
        if not scored.study.is_dicom:
            return  # NIfTI and pictures have no DICOM study to add results to
        name = scored.study.name
        try:
            ds = type(self).builder(scored, read_source_datasets(scored.study.files))
            path = write_dataset(ds, self.output_folder / f"{name}_{self.kind}.dcm")
        except Exception as e:  # e.g. a source series highdicom cannot reference; the NIfTI/JSON outputs stand
            self.run_log.add_failure(name, f"dicom {self.kind}", e)
            return
        self.run_log.add_output(name, self.kind, path)


class DICOMAnomalySRWriterOperator(_DICOMWriterBase):
    """Writes ``<name>_sr.dcm``: a Comprehensive SR with the score, threshold and decision in the source study."""

    kind = "sr"
    builder = staticmethod(build_sr)


class DICOMAnomalySegWriterOperator(_DICOMWriterBase):
    """Writes ``<name>_seg.dcm``: a binary DICOM SEG of the thresholded map referencing the source series."""

    kind = "seg"
    builder = staticmethod(build_seg)
