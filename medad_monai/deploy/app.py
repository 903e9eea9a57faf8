"""The MONAI Deploy application: input folder of DICOM series, NIfTI or PNG/JPEG -> per-study float anomaly map,
mask, overlay, JSON and, for DICOM, an SR and a SEG in the source study.

Run in-process::

    python apps/deploy -i INPUT -o OUTPUT -m BUNDLE_OR_MODEL_TS [--axis 2] [--volume-reduction max] [--device cpu]

or with the SDK's environment variables ``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``
(as a MAP runs it) and ``MEDAD_DEPLOY_AXIS``, ``MEDAD_DEPLOY_VOLUME_REDUCTION``, ``MEDAD_DEPLOY_TOP_K``,
``MEDAD_DEPLOY_DEVICE``, ``MEDAD_DEPLOY_BATCH_SIZE``, ``MEDAD_DEPLOY_MASK_SCOPE``. Arguments override environment
variables.

Why the SDK's DICOM loading operators are not used: ``DICOMDataLoaderOperator`` + ``DICOMSeriesToVolumeOperator``
build the volume with the SDK's own reader conventions (axis order, rescale, orientation), while the bundles'
``inference.json`` reads with MONAI's ``PydicomReader``; parity with the bundle (max abs diff <= 1e-5) needs the
same reader, and stray non-DICOM files must be reported, which the SDK's loader skips silently. Study discovery
is therefore :mod:`medad_monai.deploy.studies` (pydicom headers, grouped by Series Instance UID).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from medad_monai.deploy.operators import (
    AnomalyInferenceOperator,
    AnomalyResultWriterOperator,
    DICOMAnomalySegWriterOperator,
    DICOMAnomalySRWriterOperator,
    RunLog,
    StudySourceOperator,
)
from medad_monai.deploy.options import DeployOptions, parse_options
from medad_monai.deploy.scoring import resolve_model_path
from medad_monai.deploy.studies import NoStudyError, discover_studies
from medad_monai.inference import (
    BundleLoadError,
    load_bundle_model,
    model_version,
)
from medad_monai.io import atomic_write_json

__all__ = [
    "REPORT_NAME",
    "AnomalyDetectionApp",
    "DeployError",
    "PartialFailureError",
    "main",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "medad_deploy_report.json"


class DeployError(RuntimeError):
    """The run could not produce any result (no study scored); the message says why."""


class PartialFailureError(DeployError):
    """``strict`` run: some studies failed; the others' outputs and the report are written (exit status 2)."""


class AnomalyDetectionApp(Application):
    """Holoscan application: study source -> anomaly inference -> NIfTI/PNG/JSON writer, DICOM SR and SEG writers.

    Give ``options`` (see :func:`parse_options`); without them the application reads ``sys.argv`` and the
    environment when composed, as ``App().run()`` in the SDK's examples does.
    """

    def __init__(self, *args: Any, options: DeployOptions | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # ``options`` is a Holoscan property of the application (its YAML config); ours are ``deploy_options``
        self.deploy_options = options
        self.run_log = RunLog()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def compose(self) -> None:
        opts = self.deploy_options = self.deploy_options or parse_options()
        model_path = resolve_model_path(opts.model)
        studies, strays = discover_studies(opts.input)
        self.run_log.strays = strays
        opts.output.mkdir(parents=True, exist_ok=True)
        logger.info(
            "%d study(ies) in '%s', %d stray file(s); model '%s'", len(studies), opts.input, len(strays), model_path
        )
        if opts.workdir is not None:
            opts.workdir.mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="medad_deploy_", dir=opts.workdir)
        # load the bundle now, so a bad model stops the run before any study is read (BundleLoadError names it)
        model = load_bundle_model(model_path, device=opts.device, trust_embedded_config=opts.trust_model_config)

        source = StudySourceOperator(self, CountCondition(self, len(studies)), studies=studies, name="study_source")
        infer = AnomalyInferenceOperator(
            self,
            model_path=model_path,
            run_log=self.run_log,
            device=opts.device,
            scoring=opts.scoring,
            scratch=self._scratch.name,
            model=model,
            name="anomaly_inference",
        )
        writer = AnomalyResultWriterOperator(self, output_folder=opts.output, run_log=self.run_log, name="writer")
        sr = DICOMAnomalySRWriterOperator(self, output_folder=opts.output, run_log=self.run_log, name="dicom_sr")
        seg = DICOMAnomalySegWriterOperator(self, output_folder=opts.output, run_log=self.run_log, name="dicom_seg")
        self.add_flow(source, infer, {("study", "study")})
        for op in (writer, sr, seg):
            self.add_flow(infer, op, {("scored", "scored")})

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the graph, then write ``medad_deploy_report.json`` (studies, outputs, failures, stray files).

        Raises:
            DeployError: no study was scored (every one failed); the report is written first.
            PartialFailureError: ``strict`` and at least one study failed; the report and every other study's
                outputs are written first.
        """
        try:
            out = super().run(*args, **kwargs)
        finally:
            if self._scratch is not None:
                self._scratch.cleanup()
        report = self.write_report()
        if not self.run_log.studies:
            raise DeployError(f"no study could be scored from '{self.deploy_options.input}'; see {report}")
        failed = sorted({f["study"] for f in self.run_log.failures})
        if failed and self.deploy_options.strict:
            raise PartialFailureError(
                f"{len(failed)} stud{'y' if len(failed) == 1 else 'ies'} failed ({', '.join(failed)}) while "
                f"{len(self.run_log.studies)} scored; see {report}"
            )
        return out

    def write_report(self) -> Path:
        """The run report in the output folder (atomic write); returns its path."""
        opts = self.deploy_options
        log = self.run_log
        model_path = resolve_model_path(opts.model)
        report = {
            "input": str(opts.input),
            "model": {"path": str(model_path), "model_version": model_version(model_path)},
            "options": {
                **{k: v for k, v in opts.scoring.as_kwargs().items() if k != "batch_size"},
            },
            "studies": [
                {
                    "name": name,
                    "score": rec["score"],
                    "threshold": rec["threshold"],
                    "decision": rec["decision"],
                    "files": log.outputs.get(name, {}),
                    "study": rec["study"],
                }
                for name, rec in sorted(log.studies.items())
            ],
            "failures": log.failures,
            "stray_files": [s.to_dict() for s in log.strays],
        }
        path = atomic_write_json(report, opts.output / REPORT_NAME)
        for s in log.strays:
            logger.warning("stray file reported in %s: '%s' (%s)", path, s.path, s.reason)
        return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (``python apps/deploy``): 0 on success; 2 when ``--strict`` and some studies failed (the
    others were written); 1 when nothing could be scored or the options/model are bad. Errors are one line on
    stderr."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] (%(name)s) - %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # one INFO line per copied DICOM module
    try:
        options = parse_options(argv)
        AnomalyDetectionApp(options=options).run()
    except PartialFailureError as e:
        print(f"medad-deploy: error: {e}", file=sys.stderr)
        return 2
    except (NoStudyError, DeployError, BundleLoadError, FileNotFoundError, ValueError) as e:
        print(f"medad-deploy: error: {e}", file=sys.stderr)
        return 1
    return 0
