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

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, RuntimeEnv

from medad_monai.deploy.operators import (
    AnomalyInferenceOperator,
    AnomalyResultWriterOperator,
    DICOMAnomalySegWriterOperator,
    DICOMAnomalySRWriterOperator,
    RunLog,
    StudySourceOperator,
)
from medad_monai.deploy.scoring import resolve_model_path
from medad_monai.deploy.studies import NoStudyError, discover_studies
from medad_monai.inference import (
    MASK_SCOPES,
    VOLUME_REDUCTIONS,
    BundleLoadError,
    ScoringOptions,
    load_bundle_model,
    model_version,
)
from medad_monai.io import atomic_write_json

__all__ = [
    "REPORT_NAME",
    "AnomalyDetectionApp",
    "DeployError",
    "DeployOptions",
    "PartialFailureError",
    "main",
    "parse_options",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "medad_deploy_report.json"
ENV_PREFIX = "MEDAD_DEPLOY_"


class DeployError(RuntimeError):
    """The run could not produce any result (no study scored); the message says why."""


class PartialFailureError(DeployError):
    """``strict`` run: some studies failed; the others' outputs and the report are written (exit status 2)."""


def _flag(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


@dataclass
class DeployOptions:
    """Resolved run options (paths from arguments, else the SDK's ``HOLOSCAN_*`` environment variables)."""

    input: Path
    output: Path
    model: Path
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    device: str | None = None
    workdir: Path | None = None
    strict: bool = False
    trust_model_config: bool = False


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="medad-deploy",
        description="Anomaly maps, scores and DICOM SR/SEG for DICOM series, NIfTI and PNG/JPEG inputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # the SDK's standard arguments (monai.deploy.core.arg_parser), so a MAP's runner can pass them
    p.add_argument("-i", "--input", help="input file or folder (default: $HOLOSCAN_INPUT_PATH, else 'input')")
    p.add_argument("-o", "--output", help="output folder (default: $HOLOSCAN_OUTPUT_PATH, else 'output')")
    p.add_argument("-m", "--model", help="bundle folder or TorchScript (default: $HOLOSCAN_MODEL_PATH, else 'models')")
    p.add_argument("-w", "--workdir", help="scratch folder (default: $HOLOSCAN_WORKDIR, else a temporary folder)")
    p.add_argument("-l", "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"])
    # the anomaly options, also as MEDAD_DEPLOY_* environment variables
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slicing axis of 3D inputs (default 2)")
    p.add_argument("--volume-reduction", choices=VOLUME_REDUCTIONS, help="volume score from slice scores (max)")
    p.add_argument("--top-k", type=int, help="slices averaged by --volume-reduction topk (default 3)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: the bundle's policy)")
    p.add_argument("--batch-size", type=int, help="slices per network call (default 16)")
    p.add_argument(
        "--mask-scope",
        choices=MASK_SCOPES,
        help="anomalous_slices (default): mask and SEG only in slices scored anomalous; all: every pixel above",
    )
    p.add_argument(
        "--strict",
        action="store_const",
        const="1",
        help="exit status 2 when any study failed (the others' outputs and the report are still written)",
    )
    p.add_argument(
        "--trust-model-config",
        action="store_const",
        const="1",
        help="serve a bare TorchScript model with the inference.json embedded in it (parsing it runs its '$' "
        "expressions as code: only for a model you packaged or trust)",
    )
    return p


def parse_options(argv: list[str] | None = None, env: dict[str, str] | None = None) -> DeployOptions:
    """Options from ``argv`` (without the program name) over environment variables over defaults."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    # the SDK's mapping of its well-known variables (HOLOSCAN_INPUT_PATH ...) to paths, with the SDK's defaults
    runtime = {key: env.get(var, default) for key, (var, default) in RuntimeEnv.ENV_DEFAULT.items()}

    def pick(name: str, cast: Any, default: Any) -> Any:
        value = getattr(args, name)
        if value is None:
            value = env.get(ENV_PREFIX + name.upper())
        if value in (None, ""):
            return default
        try:
            return cast(value)
        except ValueError as e:
            raise ValueError(f"invalid {ENV_PREFIX + name.upper()}={value!r}: {e}") from e

    try:  # every scoring option is validated once, by ScoringOptions (medad_monai.inference.options)
        scoring = ScoringOptions(
            axis=pick("axis", int, 2),
            volume_reduction=pick("volume_reduction", str, "max"),
            top_k=pick("top_k", int, 3),
            batch_size=pick("batch_size", int, 16),
            mask_scope=pick("mask_scope", str, "anomalous_slices"),
        )
    except ValueError as e:
        raise ValueError(f"{e} (its command-line option or {ENV_PREFIX}<OPTION> variable)") from e
    workdir = args.workdir or runtime["workdir"]
    if args.log_level:
        logging.getLogger().setLevel(args.log_level)
    return DeployOptions(
        input=Path(args.input or runtime["input"]),
        output=Path(args.output or runtime["output"]),
        model=Path(args.model or runtime["model"]),
        scoring=scoring,
        device=pick("device", str, None),
        workdir=Path(workdir) if workdir else None,
        strict=pick("strict", _flag, False),
        trust_model_config=pick("trust_model_config", _flag, False),
    )


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
