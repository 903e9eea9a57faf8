"""The Deploy app's run options: command-line arguments, else the SDK's ``HOLOSCAN_*`` environment variables (the
paths, as a MAP sets them) and ``MEDAD_DEPLOY_*`` variables (everything else); the scoring options are one
:class:`~medad_monai.inference.ScoringOptions`, validated there."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.deploy.core import RuntimeEnv

from medad_monai.inference import MASK_SCOPES, VOLUME_REDUCTIONS, ScoringOptions

__all__ = ["ENV_PREFIX", "DeployOptions", "parse_options"]

ENV_PREFIX = "MEDAD_DEPLOY_"


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
        "--min-relative-body",
        type=float,
        help="score a 3D volume's slices with at least this fraction of its largest slice's body (default 0.9; "
        "0: every level inside the body, for models trained on all levels)",
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
            min_relative_body=pick("min_relative_body", float, 0.9),
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
